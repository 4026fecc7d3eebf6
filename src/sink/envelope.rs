//! The message every sink publishes: a verified webhook's raw body, or an event fetched by
//! `hookbridge replay`, with its metadata and headers. Its fields are private: an `Envelope` is
//! made only from a [`SignedBody`] (a body whose signature checked out) or, honestly marked, from
//! an event of Stripe's Events API ([`Envelope::replayed`]).

use bytes::Bytes;

use super::header;
use crate::event::{EventError, EventMeta};
use crate::verify::SignedBody;

/// A verified event on its way to the brokers: the raw body and what is known about it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The request body, byte for byte.
    payload: Bytes,
    meta: EventMeta,
    /// The original `Stripe-Signature` header, so consumers can verify the bytes themselves.
    /// Empty for a replayed event (the Events API signs nothing): no header is sent then.
    signature: String,
    /// Fetched from Stripe's Events API by `hookbridge replay`, not delivered as a webhook:
    /// the message carries `stripe-replayed: true` and no `stripe-signature`.
    replayed: bool,
    /// Headers added after the standard ones, e.g. why a dead-lettered message failed.
    extra_headers: Vec<(&'static str, String)>,
}

impl Envelope {
    /// The envelope of a verified webhook: its metadata is read from the verified bytes.
    pub fn verified(signed: SignedBody) -> Result<Envelope, EventError> {
        let meta = EventMeta::parse(signed.body())?;
        let (payload, signature) = signed.into_parts();
        Ok(Envelope {
            payload,
            meta,
            signature,
            replayed: false,
            extra_headers: Vec::new(),
        })
    }

    /// The envelope of an event fetched from Stripe's Events API by `hookbridge replay`: not a
    /// signed webhook, so it carries no signature and is marked `stripe-replayed: true`.
    pub fn replayed(body: Bytes) -> Result<Envelope, EventError> {
        Ok(Envelope {
            meta: EventMeta::parse(&body)?,
            payload: body,
            signature: String::new(),
            replayed: true,
            extra_headers: Vec::new(),
        })
    }

    /// The same message with `extra` headers added after the standard ones (a dead letter says
    /// which target refused it and why).
    pub fn with_headers(&self, extra: impl IntoIterator<Item = (&'static str, String)>) -> Envelope {
        let mut out = self.clone();
        out.extra_headers.extend(extra);
        out
    }

    /// The body, byte for byte.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// What was read from the body.
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// What was read from the body, once the message is no longer needed.
    pub fn into_meta(self) -> EventMeta {
        self.meta
    }

    /// Whether it came from `hookbridge replay` rather than a webhook.
    pub fn is_replayed(&self) -> bool {
        self.replayed
    }

    /// An envelope made of parts, for the sinks' unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(payload: Bytes, meta: EventMeta, signature: &str) -> Envelope {
        Envelope {
            payload,
            meta,
            signature: signature.to_string(),
            replayed: false,
            extra_headers: Vec::new(),
        }
    }

    /// The message key: `data.object.id` when present, else the event id.
    pub fn key(&self) -> &str {
        self.meta.key()
    }

    /// The headers of SPEC.md, in a fixed order; optional ones only when present. A replayed
    /// event has `stripe-replayed: true` instead of `stripe-signature`.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut h = Vec::with_capacity(7 + self.extra_headers.len());
        h.push((header::EVENT_ID, self.meta.id.as_str()));
        h.push((header::EVENT_TYPE, self.meta.event_type.as_str()));
        if let Some(v) = &self.meta.api_version {
            h.push((header::API_VERSION, v.as_str()));
        }
        h.push((header::LIVEMODE, if self.meta.livemode { "true" } else { "false" }));
        if let Some(a) = &self.meta.account {
            h.push((header::ACCOUNT, a.as_str()));
        }
        if !self.signature.is_empty() {
            h.push((header::SIGNATURE, self.signature.as_str()));
        }
        if self.replayed {
            h.push((header::REPLAYED, "true"));
        }
        h.push((header::CONTENT_TYPE, "application/json"));
        h.extend(self.extra_headers.iter().map(|(k, v)| (*k, v.as_str())));
        h
    }
}
