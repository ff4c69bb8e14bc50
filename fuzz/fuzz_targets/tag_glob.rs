//! Tag globs (`ListImages.tag_glob`, `SearchImages`): the SQL LIKE pattern
//! the gateway makes from a glob matches exactly the tags the glob matches —
//! `*` any run, `?` one character, everything else (`%`, `_`, `\` included)
//! literal. Both sides are modelled here: a glob matcher and Postgres' LIKE
//! with its default `\` escape.
#![no_main]

use ecr_gateway::store::image_reads::{glob_to_like, prefix_to_like};
use libfuzzer_sys::fuzz_target;

/// `*` any run of characters, `?` one character.
fn glob(pattern: &[char], text: &[char]) -> bool {
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        for i in 0..=text.len() {
            if !reach[i] {
                continue;
            }
            match p {
                '*' => next[i..].iter_mut().for_each(|r| *r = true),
                '?' if i < text.len() => next[i + 1] = true,
                c if i < text.len() && text[i] == c => next[i + 1] = true,
                _ => {}
            }
        }
        reach = next;
    }
    reach[text.len()]
}

/// One element of a LIKE pattern.
#[derive(Clone, Copy)]
enum Like {
    Any,
    One,
    Char(char),
}

fn like_elements(pattern: &str) -> Vec<Like> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '%' => Like::Any,
            '_' => Like::One,
            '\\' => Like::Char(chars.next().expect("a LIKE pattern never ends in a lone escape")),
            c => Like::Char(c),
        });
    }
    out
}

fn like(pattern: &str, text: &[char]) -> bool {
    let elements = like_elements(pattern);
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for element in elements {
        let mut next = vec![false; text.len() + 1];
        for i in 0..=text.len() {
            if !reach[i] {
                continue;
            }
            match element {
                Like::Any => next[i..].iter_mut().for_each(|r| *r = true),
                Like::One if i < text.len() => next[i + 1] = true,
                Like::Char(c) if i < text.len() && text[i] == c => next[i + 1] = true,
                _ => {}
            }
        }
        reach = next;
    }
    reach[text.len()]
}

fuzz_target!(|input: &str| {
    if input.len() > 256 {
        return;
    }
    let (pattern, tag) = input.split_once('\n').unwrap_or((input, ""));
    let pattern_chars: Vec<char> = pattern.chars().collect();
    let tag_chars: Vec<char> = tag.chars().collect();
    assert_eq!(
        like(&glob_to_like(pattern), &tag_chars),
        glob(&pattern_chars, &tag_chars),
        "glob {pattern:?} on {tag:?} (LIKE {:?})",
        glob_to_like(pattern)
    );
    // A prefix matches exactly the tags that start with it (wildcards dropped).
    let literal: String = pattern.chars().filter(|c| *c != '*' && *c != '?').collect();
    assert_eq!(
        like(&prefix_to_like(pattern), &tag_chars),
        tag.starts_with(&literal)
    );
});
