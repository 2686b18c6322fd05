//! How counts read in words, for the status page, the logs and the command line: "1 finding",
//! "2 findings". The ground floor: it imports nothing of the crate.

/// `n` and the noun, in its plural unless `n` is one.
pub fn plural(n: impl Into<i128>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else if let Some(stem) = noun.strip_suffix('y')
        && !noun.ends_with("ay")
        && !noun.ends_with("ey")
    {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::plural;

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(plural(1, "finding"), "1 finding");
        assert_eq!(plural(0_u64, "finding"), "0 findings");
        assert_eq!(plural(2, "entry"), "2 entries");
        assert_eq!(plural(3_i64, "day"), "3 days");
        assert_eq!(plural(-1, "row"), "-1 rows");
    }
}
