//! Globs over event types: `*` matches any run of characters (dots included); everything else is
//! literal.

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    /// The literal pieces between stars.
    parts: Vec<String>,
    starts_with_star: bool,
    ends_with_star: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            source: pattern.to_string(),
            parts: pattern
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            starts_with_star: pattern.starts_with('*'),
            ends_with_star: pattern.ends_with('*'),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        if !self.source.contains('*') {
            return self.source == text;
        }
        let mut rest = text;
        let n = self.parts.len();
        for (i, part) in self.parts.iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == n;
            if first && !self.starts_with_star {
                match rest.strip_prefix(part.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
                if last && !self.ends_with_star {
                    return rest.is_empty();
                }
            } else if last && !self.ends_with_star {
                return rest.ends_with(part.as_str());
            } else {
                // Leftmost match is optimal for `*` globs: later parts only get more room.
                match rest.find(part.as_str()) {
                    Some(at) => rest = &rest[at + part.len()..],
                    None => return false,
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn spec_examples() {
        assert!(m("invoice.*", "invoice.paid"));
        assert!(m("invoice.*", "invoice.payment_action_required"));
        assert!(m("*", "anything.at.all"));
        assert!(m("*", ""));
        assert!(m("customer.subscription.*", "customer.subscription.updated"));
        assert!(!m("customer.subscription.*", "customer.updated"));
        assert!(!m("invoice.*", "invoiceitem.created"));
    }

    #[test]
    fn literals_are_exact() {
        assert!(m("invoice.paid", "invoice.paid"));
        assert!(!m("invoice.paid", "invoice.paid.x"));
        assert!(!m("invoice.paid", "xinvoice.paid"));
        assert!(!m("invoice.?aid", "invoice.paid"));
    }

    #[test]
    fn star_crosses_dots_and_can_be_anywhere() {
        assert!(m("*.created", "customer.subscription.created"));
        assert!(!m("*.created", "customer.subscription.updated"));
        assert!(m("customer.*.updated", "customer.subscription.updated"));
        assert!(m("customer.*.updated", "customer.a.b.updated"));
        assert!(!m("customer.*.updated", "customer.updated"));
        assert!(m("*subscription*", "customer.subscription.deleted"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
        assert!(m("a**b", "ab"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxcxxbxxaxx"));
        assert!(m("ab*ab", "abab"));
        assert!(m("ab*ab", "ababab"));
        assert!(!m("ab*ab", "aba"));
    }
}
