//! Ids of projects, codes, tasks and schedules: 24 lowercase hex characters, ObjectId-like, so the
//! official clients (which check the length) accept them. The first 4 bytes are the creation time
//! in seconds, so ids sort by time and a recent id can be told from an old one.

use std::sync::{
    atomic::{AtomicU32, Ordering},
    OnceLock,
};

use sha2::{Digest, Sha256};

/// Length of every id, in characters.
pub const ID_LEN: usize = 24;

/// A new time-ordered id, laid out as a MongoDB ObjectId: 4 bytes of Unix seconds, 5 random
/// bytes drawn once per process (the first never 0, so that no such id has the shape of a
/// [`for_sequence`] one), and a 3-byte counter that starts at a random value. They are unique,
/// not secret: every read of a task is checked against its project's token.
pub fn new_id() -> String {
    static PROCESS: OnceLock<[u8; 5]> = OnceLock::new();
    static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        let mut bytes: [u8; 5] = rand::random();
        bytes[0] |= 1;
        bytes
    });
    let count = COUNTER
        .get_or_init(|| AtomicU32::new(rand::random()))
        .fetch_add(1, Ordering::Relaxed);
    let mut tail = [0u8; 8];
    tail[..5].copy_from_slice(process);
    tail[5..].copy_from_slice(&count.to_be_bytes()[1..]);
    id_at(unix_seconds(), tail)
}

/// A deterministic id for a dedup key (a provider's delivery id scoped to project and code): the
/// same key always gives the same id, so a redelivered webhook maps onto the task it already made.
pub fn id_for_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..ID_LEN / 2])
}

/// The id of a task named by where JetStream stored it: 4 bytes of the Unix seconds at which
/// the ingress received it, then its stream sequence as 8 bytes. A sequence below 2^40 leaves
/// the 3 bytes after the time 0, which no [`new_id`] has: [`sequence_of`] tells the two apart,
/// and the registry reads such a task from the stream by its sequence, at once.
///
/// The seconds keep the ids of a stream deleted and made again (which numbers its messages
/// from 1 again) apart from the old ones, unless both were received in the same second.
pub fn for_sequence(received_at_ms: i64, sequence: u64) -> String {
    id_at(
        (received_at_ms.max(0) / 1000) as u32,
        sequence.to_be_bytes(),
    )
}

/// The Unix seconds and the stream sequence a [`for_sequence`] id carries, if `id` has its
/// shape. A delivery id's hashed id has that shape once in 2^24 or so: a caller checks that the
/// message stored at the sequence is the task's.
pub fn sequence_of(id: &str) -> Option<(u32, u64)> {
    if !is_id(id) || &id[8..14] != "000000" {
        return None;
    }
    let seconds = u32::from_str_radix(&id[..8], 16).ok()?;
    let sequence = u64::from_str_radix(&id[8..], 16).ok()?;
    (sequence > 0).then_some((seconds, sequence))
}

fn id_at(seconds: u32, tail: [u8; 8]) -> String {
    let mut raw = [0u8; ID_LEN / 2];
    raw[..4].copy_from_slice(&seconds.to_be_bytes());
    raw[4..].copy_from_slice(&tail);
    hex::encode(raw)
}

/// Whether `s` has the shape of an id (24 lowercase hex characters).
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The creation time, in Unix seconds, that a time-ordered id carries.
pub fn id_seconds(id: &str) -> Option<u32> {
    if !is_id(id) {
        return None;
    }
    u32::from_str_radix(&id[..8], 16).ok()
}

fn unix_seconds() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_the_clients_shape_and_carry_their_time() {
        let id = new_id();
        assert!(is_id(&id), "{id}");
        let secs = id_seconds(&id).unwrap();
        assert!(secs.abs_diff(unix_seconds()) <= 1);
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn ids_made_in_a_row_differ_only_in_their_counter() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        // The process's 5 bytes (characters 8..18) are the same in every id.
        assert!(ids.iter().all(|id| id[8..18] == ids[0][8..18]));
    }

    #[test]
    fn sequence_ids_carry_their_time_and_sequence() {
        let id = for_sequence(1_700_000_000_999, 42);
        assert_eq!(id, "6553f100000000000000002a");
        assert_eq!(sequence_of(&id), Some((1_700_000_000, 42)));
        let big = for_sequence(1_700_000_000_000, (1 << 40) - 1);
        assert_eq!(sequence_of(&big), Some((1_700_000_000, (1 << 40) - 1)));
        // Past 2^40 the shape is lost (a trillion tasks in one stream).
        assert_eq!(sequence_of(&for_sequence(0, 1 << 40)), None);
        assert_eq!(sequence_of(&for_sequence(0, 0)), None);
        assert_eq!(sequence_of("nope"), None);
    }

    #[test]
    fn new_ids_never_have_the_shape_of_sequence_ids() {
        let id = new_id();
        assert_ne!(&id[8..10], "00");
        assert_eq!(sequence_of(&id), None);
        // The same holds for every process: the first random byte is odd.
        assert_eq!(u8::from_str_radix(&id[8..10], 16).unwrap() & 1, 1);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = id_at(1_700_000_000, [0xff; 8]);
        let b = id_at(1_700_000_001, [0x00; 8]);
        assert!(a < b);
    }

    #[test]
    fn keyed_ids_are_stable_and_distinct() {
        assert_eq!(id_for_key("p/c/abc"), id_for_key("p/c/abc"));
        assert_ne!(id_for_key("p/c/abc"), id_for_key("p/c/abd"));
        assert!(is_id(&id_for_key("x")));
    }

    #[test]
    fn shapes_that_are_not_ids() {
        assert!(!is_id(""));
        assert!(!is_id("0123456789abcdef0123456"));
        assert!(!is_id("0123456789ABCDEF01234567"));
        assert!(!is_id("0123456789abcdef0123456g"));
        assert_eq!(id_seconds("nope"), None);
    }
}
