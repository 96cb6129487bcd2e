//! A partition's checkpoint: the last output offsets its changelog state reflects, stored in the
//! changelog under [`CHECKPOINT_KEY`]. One format is written; both formats of the two loops it
//! replaced are still read, so an upgrade needs no reset.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Changelog key of a partition's checkpoint (the same key both old loops used).
pub const CHECKPOINT_KEY: &str = "aftercart:checkpoint";

/// The output offsets a partition's state reflects, by output topic name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub outputs: HashMap<String, i64>,
}

/// Every shape a checkpoint has been written in, newest first.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    /// The stage's format: `{"outputs": {"<topic>": offset}}`.
    Current { outputs: HashMap<String, i64> },
    /// The by-shop loop of referrals and audiences: `{"offsets": {"<topic>": offset}}`.
    ByTopic { offsets: HashMap<String, i64> },
    /// The abandonment loop, which had one output topic: `{"output_offset": offset}`.
    Single { output_offset: i64 },
}

impl Checkpoint {
    /// Decodes a stored checkpoint; `first_output` names the topic of the single-output format.
    /// `None` when it does not decode: then every output is read back, the safe side.
    pub fn decode(value: &[u8], first_output: Option<&str>) -> Option<Checkpoint> {
        let outputs = match serde_json::from_slice::<Stored>(value).ok()? {
            Stored::Current { outputs } => outputs,
            Stored::ByTopic { offsets } => offsets,
            Stored::Single { output_offset } => {
                HashMap::from([(first_output?.to_string(), output_offset)])
            }
        };
        Some(Checkpoint { outputs })
    }

    /// Raises the offset of `topic` to `offset` (never lowers it).
    pub fn advance(&mut self, topic: &str, offset: i64) {
        match self.outputs.get_mut(topic) {
            Some(slot) => *slot = (*slot).max(offset),
            None => {
                self.outputs.insert(topic.to_string(), offset);
            }
        }
    }

    /// Where reading `topic` back starts: after the checkpointed offset, else the beginning.
    pub fn read_from(&self, topic: &str) -> Option<i64> {
        self.outputs.get(topic).map(|offset| offset + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_format_round_trips() {
        let mut checkpoint = Checkpoint::default();
        checkpoint.advance("invites", 7);
        checkpoint.advance("invites", 3);
        checkpoint.advance("rewards", 2);
        let bytes = serde_json::to_vec(&checkpoint).unwrap();
        assert_eq!(Checkpoint::decode(&bytes, None), Some(checkpoint.clone()));
        assert_eq!(checkpoint.read_from("invites"), Some(8));
        assert_eq!(checkpoint.read_from("other"), None);
    }

    #[test]
    fn the_old_by_shop_format_decodes() {
        let old = br#"{"offsets":{"invites":41,"rewards":9}}"#;
        let checkpoint = Checkpoint::decode(old, Some("invites")).unwrap();
        assert_eq!(checkpoint.read_from("invites"), Some(42));
        assert_eq!(checkpoint.read_from("rewards"), Some(10));
    }

    #[test]
    fn the_old_abandonment_format_decodes_as_the_first_output() {
        let old = br#"{"output_offset":9}"#;
        let checkpoint = Checkpoint::decode(old, Some("abandonments")).unwrap();
        assert_eq!(checkpoint.read_from("abandonments"), Some(10));
        assert_eq!(Checkpoint::decode(old, None), None, "no topic to give it");
    }

    #[test]
    fn an_undecodable_checkpoint_is_none() {
        assert_eq!(Checkpoint::decode(b"not json", Some("a")), None);
        assert_eq!(Checkpoint::decode(br#"{"other":1}"#, Some("a")), None);
        assert_eq!(
            Checkpoint::decode(br#"{"output_offset":"x"}"#, Some("a")),
            None
        );
    }
}
