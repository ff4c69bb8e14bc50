//! Verifying a chain: walking its links ([`verify`]) to name the first event
//! that was modified, removed, inserted or reordered, settling a contested
//! place with the signed digests, and checking the digests against it.

use std::collections::HashSet;

use serde_json::Value;

use super::canonical::link;
use super::cloudtrail::cloudtrail_json;
use crate::store::audit_trail::AuditRow;

/// What is wrong at the first event that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Its content no longer matches its hash.
    Modified,
    /// Events before it are missing.
    Removed,
    /// It is not part of the chain (it claims a place another event holds, or none).
    Inserted,
    /// It is out of order.
    Reordered,
    /// It and another event ([`Verification::rival`]) claim the same place,
    /// and nothing after them tells which one the chain goes on from.
    Contested,
}

impl Problem {
    /// The lower-case name used in answers and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Modified => "modified",
            Problem::Removed => "removed",
            Problem::Inserted => "inserted",
            Problem::Reordered => "reordered",
            Problem::Contested => "contested",
        }
    }

    /// What it means for the event it names.
    pub fn describe(self) -> &'static str {
        match self {
            Problem::Modified => "was modified: its content no longer matches its hash",
            Problem::Removed => "follows a gap: events before it were removed",
            Problem::Inserted => "was inserted: it is not part of the chain",
            Problem::Reordered => "is out of order",
            Problem::Contested => {
                "claims the same place in the chain as another event, and no later event shows which of \
                 the two is genuine: one of them was inserted"
            }
        }
    }
}

/// One link of a chain as read back (from the database or an export line).
#[derive(Debug, Clone)]
pub struct Link {
    /// `chain.sequence`, if present.
    pub sequence: Option<i64>,
    /// `chain.previousHash`.
    pub previous_hash: Option<Vec<u8>>,
    /// `chain.hash`.
    pub hash: Option<Vec<u8>>,
    /// The event without its chain member.
    pub event: Value,
}

impl Link {
    /// Reads an export line's object.
    pub fn from_export(mut value: Value) -> Link {
        let chain = value.as_object_mut().and_then(|m| m.remove("chain"));
        let field = |name: &str| chain.as_ref().and_then(|c| c.get(name));
        let hex_of = |name: &str| {
            field(name)
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok())
        };
        Link {
            sequence: field("sequence").and_then(Value::as_i64),
            previous_hash: hex_of("previousHash"),
            hash: hex_of("hash"),
            event: value,
        }
    }

    /// A stored event's link.
    pub fn from_row(row: &AuditRow) -> Link {
        Link {
            sequence: row.seq,
            previous_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            event: cloudtrail_json(row),
        }
    }

    fn event_id(&self) -> String {
        self.event["eventID"].as_str().unwrap_or_default().to_owned()
    }

    /// Its sequence, previous hash and hash, when it has all three.
    fn parts(&self) -> Option<(i64, &[u8], &[u8])> {
        Some((
            self.sequence?,
            self.previous_hash.as_deref()?,
            self.hash.as_deref()?,
        ))
    }
}

/// The outcome of walking a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Links checked (up to and including the first bad one); with a bad
    /// one, its position in the links given (1 for the first).
    pub checked: u64,
    /// The first link that does not fit: its sequence (or position), event id and problem.
    pub first_bad: Option<(i64, String, Problem)>,
    /// With [`Problem::Contested`]: the other event that claims the same
    /// place, and its position.
    pub rival: Option<(String, u64)>,
    /// The hash of the last good link.
    pub last_hash: Vec<u8>,
}

/// Who follows whom in a set of links, to tell an inserted event from the
/// genuine one whose place it claims: the chain goes on from the genuine one.
struct Places<'a> {
    /// The (sequence, previous hash) each link claims, with its hash.
    claims: std::collections::HashMap<(i64, &'a [u8]), Vec<&'a [u8]>>,
    /// (sequence, hash) of every link.
    links: HashSet<(i64, &'a [u8])>,
}

impl<'a> Places<'a> {
    fn of(links: &'a [Link]) -> Places<'a> {
        let mut claims: std::collections::HashMap<(i64, &[u8]), Vec<&[u8]>> = Default::default();
        let mut all = HashSet::new();
        for (sequence, previous, hash) in links.iter().filter_map(Link::parts) {
            claims.entry((sequence, previous)).or_default().push(hash);
            all.insert((sequence, hash));
        }
        Places { claims, links: all }
    }

    /// Whether some link follows `(sequence, hash)`.
    fn continued(&self, sequence: i64, hash: &[u8]) -> bool {
        self.claims.contains_key(&(sequence + 1, hash))
    }

    /// Whether some link is the one `(sequence, previous)` follows.
    fn has_predecessor(&self, sequence: i64, previous: &[u8]) -> bool {
        self.links.contains(&(sequence - 1, previous))
    }

    /// Whether another link claims the same place and the chain goes on from
    /// it but not from this one: this one was inserted.
    fn displaced(&self, (sequence, previous, hash): (i64, &[u8], &[u8])) -> bool {
        !self.continued(sequence, hash)
            && self.claims[&(sequence, previous)]
                .iter()
                .any(|other| *other != hash && self.continued(sequence, other))
    }
}

/// Walks `links` in the order given. `start` is the sequence and hash the
/// first link must follow (`None`: trust the first link's own).
///
/// At the first link that does not follow the one before, the links around
/// it are compared with the rest: an event that claims a place the chain
/// holds (another event has its sequence and previous hash, and the next
/// event goes on from that other one) is named as inserted, whether it
/// stands before or after the genuine event; two events that claim one
/// place with nothing after either are contested.
pub fn verify(links: &[Link], start: Option<(i64, Vec<u8>)>) -> Verification {
    let present: HashSet<i64> = links.iter().filter_map(|l| l.sequence).collect();
    let places = Places::of(links);
    let trusted_first = start.is_none();
    let mut expected = start;
    // The state the last accepted link followed.
    let mut before_last: Option<(i64, Vec<u8>)> = None;
    let last_of = |state: &Option<(i64, Vec<u8>)>| state.as_ref().map(|l| l.1.clone()).unwrap_or_default();
    let bad = |index: usize, problem: Problem, last: &Option<(i64, Vec<u8>)>| {
        let link = &links[index];
        let position = index as u64 + 1;
        Verification {
            checked: position,
            first_bad: Some((link.sequence.unwrap_or(position as i64), link.event_id(), problem)),
            rival: None,
            last_hash: last_of(last),
        }
    };
    for (i, entry) in links.iter().enumerate() {
        let Some(parts @ (sequence, previous, hash)) = entry.parts() else {
            return bad(i, Problem::Inserted, &expected);
        };
        if link(previous, &entry.event) != hash {
            return bad(i, Problem::Modified, &expected);
        }
        if let Some((last_sequence, last_hash)) = &expected {
            let want = last_sequence + 1;
            if sequence != want || previous != last_hash.as_slice() {
                // The link accepted before this one, when there is one.
                let before = i.checked_sub(1).and_then(|p| Some((p, links[p].parts()?)));
                if let Some((p, earlier)) = before
                    && places.displaced(earlier)
                {
                    return bad(p, Problem::Inserted, &before_last);
                }
                if places.displaced(parts) {
                    return bad(i, Problem::Inserted, &expected);
                }
                if let Some((p, (earlier_sequence, earlier_previous, earlier_hash))) = before {
                    let same_place = (earlier_sequence, earlier_previous) == (sequence, previous);
                    if same_place && earlier_hash != hash {
                        // Neither or both go on: nothing here tells which is genuine.
                        let mut verdict = bad(p, Problem::Contested, &before_last);
                        verdict.checked = i as u64 + 1;
                        verdict.rival = Some((entry.event_id(), i as u64 + 1));
                        return verdict;
                    }
                    // The chain goes on from this link and not from the one
                    // accepted before it (which the walk had to trust, or
                    // which holds this link's sequence): that one was inserted.
                    let takes_the_place = sequence == want || (trusted_first && p == 0);
                    if takes_the_place
                        && places.continued(sequence, hash)
                        && !places.continued(earlier_sequence, earlier_hash)
                    {
                        return bad(p, Problem::Inserted, &before_last);
                    }
                }
                if sequence == want {
                    return bad(i, Problem::Inserted, &expected);
                }
                // Between two links that follow each other, and following no link at all.
                let next_fits = links
                    .get(i + 1)
                    .and_then(Link::parts)
                    .is_some_and(|(s, prev, _)| s == want && prev == last_hash.as_slice());
                if next_fits && !places.has_predecessor(sequence, previous) {
                    return bad(i, Problem::Inserted, &expected);
                }
                // The missing ones may stand later in the file (reordered) or nowhere (removed).
                let problem = if sequence > want && !present.contains(&want) {
                    Problem::Removed
                } else {
                    Problem::Reordered
                };
                return bad(i, problem, &expected);
            }
        }
        before_last = expected;
        expected = Some((sequence, hash.to_vec()));
    }
    Verification {
        checked: links.len() as u64,
        first_bad: None,
        rival: None,
        last_hash: last_of(&expected),
    }
}

/// Settles a [`Problem::Contested`] verdict with the signed digests: the
/// event whose hash a valid digest signed for that sequence is genuine, the
/// other one was inserted. Any other verdict is returned as it is.
pub fn settle_contest(
    verification: Verification,
    links: &[Link],
    digests: &[crate::audit::digest::SignedDigest],
    trusted: &ed25519_dalek::VerifyingKey,
) -> Verification {
    let (Some((sequence, first, Problem::Contested)), Some((second, second_position))) =
        (&verification.first_bad, &verification.rival)
    else {
        return verification;
    };
    let hash_of = |id: &str| {
        links
            .iter()
            .find(|l| l.sequence == Some(*sequence) && l.event_id() == id)
            .and_then(|l| l.hash.clone())
    };
    let signed = digests
        .iter()
        .filter(|d| d.sequence == *sequence && crate::audit::digest::check(d, trusted).is_ok())
        .map(|d| &d.hash)
        .next();
    let Some(signed) = signed else {
        return verification;
    };
    let (inserted, position, last_hash) = if hash_of(first).as_ref() == Some(signed) {
        (second.clone(), *second_position, signed.clone())
    } else if hash_of(second).as_ref() == Some(signed) {
        (
            first.clone(),
            verification.checked - 1,
            verification.last_hash.clone(),
        )
    } else {
        return verification;
    };
    Verification {
        checked: position,
        first_bad: Some((*sequence, inserted, Problem::Inserted)),
        rival: None,
        last_hash,
    }
}

/// What the signed digests say about a chain that verified link by link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCheck {
    /// Digests that cover an event of the chain and match it.
    pub matched: usize,
    /// Events after the newest matching digest (not protected by a signature yet).
    pub unsigned_tail: usize,
    /// The first problem: a digest that does not verify, or a signed hash the chain does not reproduce.
    pub problem: Option<String>,
}

/// Checks `digests` against `links` (already verified by [`verify`]) with the trusted key.
pub fn check_digests(
    links: &[Link],
    digests: &[crate::audit::digest::SignedDigest],
    trusted: &ed25519_dalek::VerifyingKey,
) -> DigestCheck {
    let (Some(first), Some(last)) = (
        links.first().and_then(|l| l.sequence),
        links.last().and_then(|l| l.sequence),
    ) else {
        return DigestCheck {
            matched: 0,
            unsigned_tail: 0,
            problem: None,
        };
    };
    let mut matched = 0;
    let mut newest = first - 1;
    for digest in digests.iter().filter(|d| (first..=last).contains(&d.sequence)) {
        if let Err(problem) = crate::audit::digest::check(digest, trusted) {
            return DigestCheck {
                matched,
                unsigned_tail: 0,
                problem: Some(problem),
            };
        }
        let link = links.iter().find(|l| l.sequence == Some(digest.sequence));
        if link.and_then(|l| l.hash.as_ref()) != Some(&digest.hash) {
            return DigestCheck {
                matched,
                unsigned_tail: 0,
                problem: Some(format!(
                    "the chain does not reproduce the hash signed at {} for sequence {}: events up to it were \
                     changed and the chain recomputed",
                    digest.signed_at.to_rfc3339(),
                    digest.sequence
                )),
            };
        }
        matched += 1;
        newest = newest.max(digest.sequence);
    }
    let problem = (matched == 0).then(|| "no signed digest covers these events".to_owned());
    DigestCheck {
        matched,
        unsigned_tail: (last - newest).max(0) as usize,
        problem,
    }
}
