//! Dump and stream compared: a table filled before the agent starts (dumped) and its twin
//! filled from it after the sync phase began (streamed) must give etcd the same keys and the
//! same bytes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::World;

impl World {
    /// The keys under `<prefix>/<table>/` (without that part) and their values.
    pub async fn table_rows(&self, table: &str) -> BTreeMap<String, String> {
        let start = format!("{}/{table}/", self.prefix());
        self.etcd_data()
            .await
            .into_iter()
            .filter_map(|(key, value)| key.strip_prefix(&start).map(|k| (k.to_owned(), value)))
            .collect()
    }

    /// Waits until `streamed` holds `rows` keys, then asserts that it and `dumped` (which must
    /// hold `rows` keys too) hold the same keys and values, byte for byte.
    pub async fn assert_twins(&self, dumped: &str, streamed: &str, rows: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.table_rows(streamed).await.len();
            if got == rows {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{streamed}: {got} keys in etcd, waited for {rows}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let from_dump = self.table_rows(dumped).await;
        let from_stream = self.table_rows(streamed).await;
        assert_eq!(from_dump.len(), rows, "{dumped}: {from_dump:#?}");
        for (key, value) in &from_dump {
            assert_eq!(
                from_stream.get(key),
                Some(value),
                "key {key}: dumped into {dumped} and streamed into {streamed} differently"
            );
        }
    }

    /// Asserts that `<prefix>/<key_suffix>` holds valid JSON containing each of `forms` (the
    /// documented forms of its values), and returns it.
    pub async fn assert_forms(&self, key_suffix: &str, forms: &[&str]) -> String {
        let value = self
            .etcd_value(key_suffix)
            .await
            .unwrap_or_else(|| panic!("{key_suffix} missing"));
        for form in forms {
            let shown: String = value.chars().take(400).collect();
            assert!(value.contains(form), "{key_suffix}: {form} not in {shown}");
        }
        // Valid JSON (serde_json's own parser refuses numbers beyond a double's range).
        assert!(
            etcd_sync_api::json::canonical_json(&value).is_some(),
            "{key_suffix} is not JSON: {value}"
        );
        value
    }
}
