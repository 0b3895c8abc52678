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
}
