//! Event metadata read from the raw body without re-serialising it.
//!
//! Only the fields hookbridge needs are decoded; the body itself travels on untouched.

use serde::Deserialize;

/// Longest event id accepted, in bytes. Stripe's ids (`evt_…`) are a few dozen bytes; a longer one
/// is refused so that the dedup window and the log lines stay small.
pub const MAX_ID_BYTES: usize = 255;

/// Longest event type accepted, in bytes. Stripe's longest types are under 60 bytes.
pub const MAX_TYPE_BYTES: usize = 128;

/// Longest Connect account id accepted, in bytes (it may be part of a topic or routing key).
pub const MAX_ACCOUNT_BYTES: usize = 255;

/// What hookbridge needs to know about an event to route and label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// `id`, e.g. `evt_1N…`.
    pub id: String,
    /// `type`, e.g. `invoice.paid`.
    pub event_type: String,
    /// `api_version`, when present (thin events have none).
    pub api_version: Option<String>,
    /// `livemode`; absent counts as test mode.
    pub livemode: bool,
    /// The Connect account: `account` for snapshot events, `context` for thin events.
    pub account: Option<String>,
    /// `data.object.id` for snapshot events, `related_object.id` for thin events.
    pub object_id: Option<String>,
    /// `created` as Unix seconds, when it is a number (snapshot events).
    pub created: Option<i64>,
    /// True for thin events (`"object": "v2.core.event"`).
    pub thin: bool,
}

/// Why a verified body is not an event we can route (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    /// The body is not UTF-8 (JSON must be), at this byte offset.
    #[error("the body is not valid UTF-8 (at byte {0}), so it is not JSON")]
    NotUtf8(usize),
    /// A field is longer than Stripe ever sends: `(field, limit in bytes)`.
    #[error("the event's `{0}` is longer than {1} bytes")]
    TooLong(&'static str, usize),
    #[error("the event has no string `type`")]
    NoType,
    #[error("the event has no string `id`")]
    NoId,
}

impl EventError {
    /// Short machine-readable code used in JSON errors and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::NotJson(_) | EventError::NotUtf8(_) => "invalid_json",
            EventError::NoType | EventError::NoId | EventError::TooLong(..) => "invalid_event",
        }
    }
}

#[derive(Deserialize)]
struct RawEvent {
    id: Option<Loose>,
    #[serde(rename = "type")]
    event_type: Option<Loose>,
    object: Option<Loose>,
    api_version: Option<Loose>,
    livemode: Option<Loose>,
    account: Option<Loose>,
    context: Option<Loose>,
    created: Option<Loose>,
    data: Option<Nested>,
    related_object: Option<WithId>,
}

#[derive(Deserialize)]
struct Nested {
    object: Option<WithId>,
}

#[derive(Deserialize)]
struct WithId {
    id: Option<Loose>,
}

/// A JSON value kept only when it is a string, number or boolean; anything else is skipped
/// without allocating.
enum Loose {
    Str(String),
    Int(i64),
    Bool(bool),
    Other,
}

impl Loose {
    fn into_string(self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Loose, E> {
                Ok(Loose::Str(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
                Ok(i64::try_from(v).map(Loose::Int).unwrap_or(Loose::Other))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Loose, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_none<E>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Loose, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl EventMeta {
    /// Reads the metadata of a Stripe event (snapshot or thin) from its raw JSON bytes.
    ///
    /// The whole body must be UTF-8, also inside fields that are skipped: consumers decode the
    /// message as JSON text, so a body that is not is refused here, whatever the sink. One pass of
    /// `str::from_utf8` checks it; serde_json then reads the `str` without checking again.
    /// Ids, types and accounts longer than Stripe's are refused ([`MAX_ID_BYTES`] and friends).
    pub fn parse(body: &[u8]) -> Result<EventMeta, EventError> {
        let text = std::str::from_utf8(body).map_err(|e| EventError::NotUtf8(e.valid_up_to()))?;
        let raw: RawEvent = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) => return Err(EventError::NotJson(short_json_error(&e))),
        };
        let event_type = raw.event_type.and_then(Loose::into_string).ok_or(EventError::NoType)?;
        if event_type.is_empty() {
            return Err(EventError::NoType);
        }
        let id = raw
            .id
            .and_then(Loose::into_string)
            .filter(|s| !s.is_empty())
            .ok_or(EventError::NoId)?;
        if id.len() > MAX_ID_BYTES {
            return Err(EventError::TooLong("id", MAX_ID_BYTES));
        }
        if event_type.len() > MAX_TYPE_BYTES {
            return Err(EventError::TooLong("type", MAX_TYPE_BYTES));
        }
        let thin = matches!(&raw.object, Some(Loose::Str(o)) if o == "v2.core.event");
        let (account, object_id) = if thin {
            (
                raw.context.and_then(Loose::into_string),
                raw.related_object.and_then(|o| o.id).and_then(Loose::into_string),
            )
        } else {
            (
                raw.account.and_then(Loose::into_string),
                raw.data
                    .and_then(|d| d.object)
                    .and_then(|o| o.id)
                    .and_then(Loose::into_string),
            )
        };
        if account.as_ref().is_some_and(|a| a.len() > MAX_ACCOUNT_BYTES) {
            return Err(EventError::TooLong(
                if thin { "context" } else { "account" },
                MAX_ACCOUNT_BYTES,
            ));
        }
        Ok(EventMeta {
            id,
            event_type,
            api_version: raw.api_version.and_then(Loose::into_string),
            livemode: matches!(raw.livemode, Some(Loose::Bool(true))),
            account: account.filter(|a| !a.is_empty()),
            object_id: object_id.filter(|o| !o.is_empty()),
            created: match raw.created {
                Some(Loose::Int(t)) => Some(t),
                _ => None,
            },
            thin,
        })
    }

    /// The part of the type before its last dot: `invoice` for `invoice.paid`,
    /// `customer.subscription` for `customer.subscription.updated`; the whole type when it has no dot.
    pub fn object(&self) -> &str {
        object_of(&self.event_type)
    }

    /// `live` or `test`.
    pub fn livemode_label(&self) -> &'static str {
        if self.livemode {
            "live"
        } else {
            "test"
        }
    }

    /// The Connect account id, or `platform`.
    pub fn account_label(&self) -> &str {
        self.account.as_deref().unwrap_or("platform")
    }

    /// The message key: `data.object.id` when present, else the event id.
    pub fn key(&self) -> &str {
        self.object_id.as_deref().unwrap_or(&self.id)
    }
}

/// The part of an event type before its last dot.
pub fn object_of(event_type: &str) -> &str {
    match event_type.rfind('.') {
        Some(i) => &event_type[..i],
        None => event_type,
    }
}

/// serde_json's message without echoing any of the payload (it never quotes input, but keep it short).
fn short_json_error(e: &serde_json::Error) -> String {
    format!("{} at line {} column {}", category(e), e.line(), e.column())
}

fn category(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "not an object",
        Category::Eof => "unexpected end of input",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_event_fields() {
        let body = br#"{
          "id": "evt_1", "object": "event", "api_version": "2024-06-20", "created": 1700000000,
          "data": {"object": {"id": "pi_123", "object": "payment_intent", "metadata": {"id": "no"}}},
          "livemode": true, "pending_webhooks": 1, "request": {"id": null},
          "type": "payment_intent.succeeded"
        }"#;
        let m = EventMeta::parse(body).unwrap();
        assert_eq!(m.id, "evt_1");
        assert_eq!(m.event_type, "payment_intent.succeeded");
        assert_eq!(m.api_version.as_deref(), Some("2024-06-20"));
        assert!(m.livemode);
        assert_eq!(m.account, None);
        assert_eq!(m.object_id.as_deref(), Some("pi_123"));
        assert_eq!(m.created, Some(1_700_000_000));
        assert_eq!(m.object(), "payment_intent");
        assert_eq!(m.livemode_label(), "live");
        assert_eq!(m.account_label(), "platform");
        assert_eq!(m.key(), "pi_123");
        assert!(!m.thin);
    }

    #[test]
    fn connect_event_has_account() {
        let body = br#"{"id":"evt_2","type":"account.updated","account":"acct_9","livemode":false,
                        "data":{"object":{"id":"acct_9"}}}"#;
        let m = EventMeta::parse(body).unwrap();
        assert_eq!(m.account.as_deref(), Some("acct_9"));
        assert_eq!(m.account_label(), "acct_9");
        assert_eq!(m.livemode_label(), "test");
    }

    #[test]
    fn thin_event_uses_related_object_and_context() {
        let body = br#"{"id":"evt_test_65R","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered",
            "created":"2024-09-17T06:20:52.246Z","livemode":false,"context":"acct_123",
            "related_object":{"id":"mtr_test_61R","type":"billing.meter","url":"/v1/billing/meters/mtr_test_61R"}}"#;
        let m = EventMeta::parse(body).unwrap();
        assert!(m.thin);
        assert_eq!(m.object_id.as_deref(), Some("mtr_test_61R"));
        assert_eq!(m.account.as_deref(), Some("acct_123"));
        assert_eq!(m.created, None);
        assert_eq!(m.api_version, None);
        assert_eq!(m.object(), "v1.billing.meter");
    }

    #[test]
    fn key_falls_back_to_event_id() {
        let m =
            EventMeta::parse(br#"{"id":"evt_3","type":"balance.available","data":{"object":{"object":"balance"}}}"#)
                .unwrap();
        assert_eq!(m.key(), "evt_3");
        let m = EventMeta::parse(br#"{"id":"evt_3","type":"x.y","data":null}"#).unwrap();
        assert_eq!(m.key(), "evt_3");
        let m = EventMeta::parse(br#"{"id":"evt_3","type":"x.y","data":{"object":{"id":42}}}"#).unwrap();
        assert_eq!(m.key(), "evt_3");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let m = EventMeta::parse(br#"{"id":"evt_\u0034","type":"invoice\u002epaid"}"#).unwrap();
        assert_eq!(m.id, "evt_4");
        assert_eq!(m.event_type, "invoice.paid");
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        for (body, want) in [
            (&br"not json"[..], "invalid_json"),
            (br"", "invalid_json"),
            (br"[1,2]", "invalid_json"),
            (br#""str""#, "invalid_json"),
            (br#"{"id":"evt_1"}"#, "invalid_event"),
            (br#"{"id":"evt_1","type":7}"#, "invalid_event"),
            (br#"{"id":"evt_1","type":""}"#, "invalid_event"),
            (br#"{"id":"evt_1","type":null}"#, "invalid_event"),
            (br#"{"type":"invoice.paid"}"#, "invalid_event"),
            (br#"{"id":1,"type":"invoice.paid"}"#, "invalid_event"),
            (br#"{"id":"evt_1","type":"invoice.paid""#, "invalid_json"),
            (br#"{"id":"evt_1","type":"invoice.paid"} trailing"#, "invalid_json"),
        ] {
            let err = EventMeta::parse(body).unwrap_err();
            assert_eq!(err.code(), want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_not_json_even_in_skipped_fields() {
        let good = "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"data\":{\"d\":\"caf\u{e9}\"}}".as_bytes();
        assert!(EventMeta::parse(good).is_ok());
        for body in [
            // In a skipped string, a skipped key, the id, and an encoded surrogate in a skipped string.
            &b"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"data\":{\"x\":\"caf\xe9\"}}"[..],
            b"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"\xff\":1}",
            b"{\"id\":\"evt_\xc3\",\"type\":\"invoice.paid\"}",
            b"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"s\":\"\xed\xa0\x80\"}",
        ] {
            let err = EventMeta::parse(body).unwrap_err();
            assert_eq!(err.code(), "invalid_json", "{}", String::from_utf8_lossy(body));
            assert!(matches!(err, EventError::NotUtf8(_)), "{err:?}");
        }
    }

    #[test]
    fn ids_types_and_accounts_longer_than_stripes_are_refused() {
        let event = |id: &str, ty: &str, account: &str| {
            format!(r#"{{"id":"{id}","type":"{ty}","account":"{account}"}}"#).into_bytes()
        };
        let id_at = format!("evt_{}", "a".repeat(MAX_ID_BYTES - 4));
        let type_at = format!("a.{}", "b".repeat(MAX_TYPE_BYTES - 2));
        let acct_at = format!("acct_{}", "c".repeat(MAX_ACCOUNT_BYTES - 5));
        let m = EventMeta::parse(&event(&id_at, &type_at, &acct_at)).unwrap();
        assert_eq!((m.id.len(), m.event_type.len()), (MAX_ID_BYTES, MAX_TYPE_BYTES));
        for (body, field) in [
            (event(&format!("{id_at}x"), "invoice.paid", "acct_1"), "id"),
            (event("evt_1", &format!("{type_at}x"), "acct_1"), "type"),
            (event("evt_1", "invoice.paid", &format!("{acct_at}x")), "account"),
            (event(&"e".repeat(512 * 1024), "invoice.paid", "acct_1"), "id"),
        ] {
            let err = EventMeta::parse(&body).unwrap_err();
            assert_eq!(err.code(), "invalid_event");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }

    #[test]
    fn object_of_types() {
        assert_eq!(object_of("invoice.paid"), "invoice");
        assert_eq!(object_of("customer.subscription.updated"), "customer.subscription");
        assert_eq!(object_of("ping"), "ping");
    }
}
