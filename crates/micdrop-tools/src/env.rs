//! `${VAR}` references in config values, read from the environment at start-up.

/// Replaces every `${NAME}` in `value` with the environment variable `NAME`. `$$` is a literal
/// `$`. A missing variable is an error naming it (the value itself is never shown).
pub fn expand_env(value: &str) -> Result<String, String> {
    expand_with(value, |name| std::env::var(name).ok())
}

pub(crate) fn expand_with(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {value:?}"))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in `${{...}}`"));
            }
            let v =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_reports_missing_names_only() {
        let lookup = |n: &str| (n == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(
            expand_with("Bearer ${TOKEN}", lookup).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(expand_with("a $$ b $c", lookup).unwrap(), "a $ b $c");
        let e = expand_with("${MISSING}", lookup).unwrap_err();
        assert!(e.contains("MISSING"), "{e}");
        assert!(expand_with("${TOKEN", lookup).is_err());
        assert!(expand_with("${A-B}", lookup).is_err());
    }
}
