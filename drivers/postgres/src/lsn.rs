use std::fmt;
use std::str::FromStr;

/// A WAL location, printed and parsed as PostgreSQL does (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: the stream makes a position, so this text, for every source transaction,
        // and `{:X}` twice cost more than the rest of the position.
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut text = [0u8; 17];
        let mut len = 0;
        for (i, half) in [(self.0 >> 32) as u32, self.0 as u32]
            .into_iter()
            .enumerate()
        {
            if i == 1 {
                text[len] = b'/';
                len += 1;
            }
            let digits = (32 - half.leading_zeros()).div_ceil(4).max(1);
            for d in (0..digits).rev() {
                text[len] = HEX[((half >> (4 * d)) & 0xF) as usize];
                len += 1;
            }
        }
        // Only ASCII digits and '/' were written.
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid LSN {s:?} (expected the form 16/B374D848)");
        let (high, low) = s.split_once('/').ok_or_else(invalid)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| invalid())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| invalid())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for text in [
            "0/0",
            "0/16B3748",
            "16/B374D848",
            "FFFFFFFF/FFFFFFFF",
            "1/0",
            "A/F",
            "8/E57860B0",
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "0", "x/1", "1/", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text}");
        }
    }
}
