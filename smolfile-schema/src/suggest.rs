//! "Did you mean" for near misses.

/// The candidate `word` most likely was meant to be: one a prefix of the other (`mem`
/// for `memory`), else the nearest within two edits, ignoring case. Ties go to the
/// earlier candidate.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .filter_map(|candidate| {
            let lower = candidate.to_lowercase();
            let distance = edit_distance(&word, &lower);
            let prefix = word.len() >= 2 && (lower.starts_with(&word) || word.starts_with(&lower));
            (distance <= 2 || prefix).then_some(((!prefix, distance), candidate))
        })
        .min_by_key(|&(rank, _)| rank)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("prots", "ports"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn picks_the_nearest_plausible_candidate() {
        let keys = ["volumes", "ports", "init", "env", "workdir"];
        assert_eq!(closest("prots", keys), Some("ports"));
        assert_eq!(closest("PORTS", keys), Some("ports"));
        assert_eq!(closest("vol", keys), Some("volumes"));
        // A prefix beats a closer edit distance: "mem" is two edits from "net".
        assert_eq!(closest("mem", ["net", "memory"]), Some("memory"));
        assert_eq!(closest("environment", keys), Some("env"));
        assert_eq!(closest("hostname", keys), None);
    }
}
