//! `--types GLOB…`: what the Events API can filter (`types[]` for up to 20 exact names, `type`
//! for one `prefix.*` group) and what is filtered here, after the API answered.

use crate::route::Glob;

/// The most exact names the API takes in `types[]`.
pub const MAX_API_TYPES: usize = 20;

/// The type filter sent to the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTypes {
    /// No filter: every type (and the globs are applied here).
    All,
    /// `type=invoice.*`: one group with a trailing wildcard, as the API documents it.
    Group(String),
    /// `types[]=…`: exact names.
    Exact(Vec<String>),
}

/// The `--types` globs.
#[derive(Debug, Clone, Default)]
pub struct TypeFilter {
    globs: Vec<Glob>,
}

impl TypeFilter {
    /// Refuses empty patterns. No patterns means every type.
    pub fn new(patterns: &[String]) -> Result<TypeFilter, String> {
        let mut globs: Vec<Glob> = Vec::new();
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                return Err("--types: an empty pattern; give event types like invoice.paid or invoice.*".into());
            }
            if !globs.iter().any(|g| g.as_str() == p) {
                globs.push(Glob::new(p));
            }
        }
        Ok(TypeFilter { globs })
    }

    /// Whether an event of this type is replayed.
    pub fn matches(&self, event_type: &str) -> bool {
        self.globs.is_empty() || self.globs.iter().any(|g| g.matches(event_type))
    }

    /// The narrowest filter the API can apply for these globs; [`Self::matches`] still runs on
    /// every event, so the API filter only saves transfer.
    pub fn api(&self) -> ApiTypes {
        if self.globs.is_empty() || self.globs.iter().any(|g| g.as_str() == "*") {
            return ApiTypes::All;
        }
        let exact: Vec<String> = self
            .globs
            .iter()
            .filter(|g| !g.as_str().contains('*'))
            .map(|g| g.as_str().to_string())
            .collect();
        if exact.len() == self.globs.len() {
            return if exact.len() <= MAX_API_TYPES {
                ApiTypes::Exact(exact)
            } else {
                ApiTypes::All
            };
        }
        if let [only] = self.globs.as_slice() {
            let p = only.as_str();
            if let Some(prefix) = p.strip_suffix(".*") {
                if !prefix.is_empty() && !prefix.contains('*') {
                    return ApiTypes::Group(p.to_string());
                }
            }
        }
        ApiTypes::All
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn f(p: &[&str]) -> TypeFilter {
        TypeFilter::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_names_go_to_the_api_up_to_twenty() {
        assert_eq!(
            f(&["invoice.paid", "charge.succeeded"]).api(),
            ApiTypes::Exact(vec!["invoice.paid".into(), "charge.succeeded".into()])
        );
        let many: Vec<String> = (0..21).map(|i| format!("t{i}.x")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(f(&refs[..20]).api(), ApiTypes::Exact(many[..20].to_vec()));
        let all = f(&refs);
        assert_eq!(all.api(), ApiTypes::All);
        assert!(all.matches("t20.x") && !all.matches("t21.x"));
    }

    #[test]
    fn one_trailing_group_goes_to_the_api_other_globs_are_local() {
        assert_eq!(f(&["invoice.*"]).api(), ApiTypes::Group("invoice.*".into()));
        assert_eq!(
            f(&["customer.subscription.*"]).api(),
            ApiTypes::Group("customer.subscription.*".into())
        );
        for local in [
            &["*.succeeded"][..],
            &["invoice.*", "charge.*"],
            &["invoice.*", "charge.succeeded"],
            &["*"],
        ] {
            assert_eq!(f(local).api(), ApiTypes::All, "{local:?}");
        }
        let g = f(&["*.succeeded", "invoice.paid"]);
        assert!(g.matches("charge.succeeded") && g.matches("invoice.paid") && !g.matches("invoice.created"));
    }

    #[test]
    fn no_pattern_matches_everything_and_empty_is_refused() {
        assert!(f(&[]).matches("anything.at_all"));
        assert_eq!(f(&[]).api(), ApiTypes::All);
        assert!(TypeFilter::new(&[" ".into()]).is_err());
    }
}
