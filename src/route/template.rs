//! Destination templates: `{type}`, `{object}`, `{livemode}`, `{account}` between literal text.

use crate::event::EventMeta;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Type,
    Object,
    Livemode,
    Account,
}

/// A compiled destination template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// Why a template does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("is empty")]
    Empty,
    #[error("has an unknown placeholder {{{0}}}; use {{type}}, {{object}}, {{livemode}} or {{account}}")]
    UnknownPlaceholder(String),
    #[error("has an unclosed `{{`")]
    Unclosed,
    #[error("has a `}}` without `{{`")]
    StrayClose,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Literal(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(TemplateError::StrayClose),
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Literal(rest[..i].to_string()));
                    }
                    let after = &rest[i + 1..];
                    let close = after.find('}').ok_or(TemplateError::Unclosed)?;
                    let name = &after[..close];
                    pieces.push(match name {
                        "type" => Piece::Type,
                        "object" => Piece::Object,
                        "livemode" => Piece::Livemode,
                        "account" => Piece::Account,
                        other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
                    });
                    rest = &after[close + 1..];
                }
            }
        }
        Ok(Template {
            source: source.to_string(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template has no placeholder (its rendering is always the same).
    pub fn is_constant(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Literal(_)))
    }

    /// The destination for one event.
    pub fn render(&self, meta: &EventMeta) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for piece in &self.pieces {
            out.push_str(match piece {
                Piece::Literal(s) => s,
                Piece::Type => &meta.event_type,
                Piece::Object => meta.object(),
                Piece::Livemode => meta.livemode_label(),
                Piece::Account => meta.account_label(),
            });
        }
        out
    }

    /// The destination for an event type alone (for `hookbridge route`): `{livemode}` and
    /// `{account}` are shown as placeholders since they depend on the event.
    pub fn render_for_type(&self, event_type: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            out.push_str(match piece {
                Piece::Literal(s) => s,
                Piece::Type => event_type,
                Piece::Object => crate::event::object_of(event_type),
                Piece::Livemode => "{livemode}",
                Piece::Account => "{account}",
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(event_type: &str, livemode: bool, account: Option<&str>) -> EventMeta {
        EventMeta {
            id: "evt_1".into(),
            event_type: event_type.into(),
            api_version: None,
            livemode,
            account: account.map(str::to_string),
            object_id: None,
            created: None,
            thin: false,
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = Template::parse("stripe.{livemode}.{account}.{object}.{type}").unwrap();
        assert_eq!(
            t.render(&meta("customer.subscription.updated", true, Some("acct_1"))),
            "stripe.live.acct_1.customer.subscription.customer.subscription.updated"
        );
        assert_eq!(
            t.render(&meta("invoice.paid", false, None)),
            "stripe.test.platform.invoice.invoice.paid"
        );
    }

    #[test]
    fn literal_only_and_adjacent_placeholders() {
        let t = Template::parse("stripe.payments").unwrap();
        assert!(t.is_constant());
        assert_eq!(t.render(&meta("x.y", false, None)), "stripe.payments");
        let t = Template::parse("{object}{livemode}").unwrap();
        assert!(!t.is_constant());
        assert_eq!(t.render(&meta("invoice.paid", false, None)), "invoicetest");
        assert_eq!(t.render_for_type("invoice.paid"), "invoice{livemode}");
    }

    #[test]
    fn errors() {
        assert_eq!(Template::parse(""), Err(TemplateError::Empty));
        assert_eq!(
            Template::parse("a.{nope}"),
            Err(TemplateError::UnknownPlaceholder("nope".into()))
        );
        assert_eq!(Template::parse("a.{type"), Err(TemplateError::Unclosed));
        assert_eq!(Template::parse("a}b"), Err(TemplateError::StrayClose));
        assert_eq!(
            Template::parse("{}"),
            Err(TemplateError::UnknownPlaceholder(String::new()))
        );
        let msg = TemplateError::UnknownPlaceholder("nope".into()).to_string();
        assert!(msg.contains("{nope}") && msg.contains("{type}"), "{msg}");
    }
}
