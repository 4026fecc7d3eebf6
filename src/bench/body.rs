//! Request bodies for the load generator: the fixtures as templates, each request a copy with a
//! unique event id written in place and, with `--size`, padding inside the JSON.
//!
//! Every id has the same width, so a body is one `memcpy` of its template plus the id bytes:
//! generating it costs far less than signing it.

use std::path::Path;

use bytes::{Bytes, BytesMut};

/// Name of the top-level field that carries the padding: a string of `x`, ignored by consumers.
pub const PADDING_FIELD: &str = "hookbridge_bench_padding";
/// Width of every generated event id: `evt_` + 8 run characters + `_` + 16 digits.
pub const ID_WIDTH: usize = 4 + 8 + 1 + 16;

/// Why the fixtures cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a Stripe event: {why}")]
    NotEvent { path: String, why: String },
    #[error("no *.json fixtures in {0}")]
    Empty(String),
}

/// One fixture, ready to stamp out bodies.
#[derive(Debug, Clone)]
pub struct Template {
    /// The fixture's event type.
    pub event_type: String,
    bytes: Vec<u8>,
    /// Offset of the id's characters (inside its quotes).
    id_at: usize,
}

impl Template {
    /// Builds a template from a fixture body. With `size`, the body is compacted (whitespace
    /// outside strings removed, key order kept), padded to `size` bytes when it is smaller, and
    /// its `id` member, first in Stripe's events, moved last (see [`id_last`]).
    pub fn new(path: &str, fixture: &[u8], size: Option<usize>) -> Result<Template, BodyError> {
        let not_event = |why: &str| BodyError::NotEvent {
            path: path.to_string(),
            why: why.to_string(),
        };
        let value: serde_json::Value =
            serde_json::from_slice(fixture).map_err(|e| not_event(&format!("not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| not_event("not a JSON object"))?;
        let id = obj
            .get("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| not_event("no string `id`"))?;
        let event_type = obj
            .get("type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| not_event("no string `type`"))?
            .to_string();
        let mut text = match size {
            Some(_) => compact(fixture),
            None => fixture.to_vec(),
        };
        // Put a placeholder of the generated ids' width where the fixture's id was. The id
        // string is the first occurrence of `"<id>"` (fixtures keep `id` first, as Stripe does).
        let quoted = format!("\"{id}\"");
        let at = find(&text, quoted.as_bytes()).ok_or_else(|| not_event("cannot locate the id in the text"))?;
        let placeholder = format!("\"{}\"", "0".repeat(ID_WIDTH));
        text.splice(at..at + quoted.len(), placeholder.bytes());
        let mut id_at = at + 1;
        if let Some(size) = size {
            pad(&mut text, size);
            id_at = id_last(&mut text, id_at);
        }
        Ok(Template {
            event_type,
            bytes: text,
            id_at,
        })
    }

    /// Where the id's characters start: every byte before is the same in each body.
    pub fn id_at(&self) -> usize {
        self.id_at
    }

    /// The length of every body made from this template.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a template holds at least `{}`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A body with the event id `id` (exactly [`ID_WIDTH`] bytes).
    pub fn body(&self, id: &[u8; ID_WIDTH]) -> Bytes {
        let mut b = BytesMut::with_capacity(self.bytes.len());
        b.extend_from_slice(&self.bytes);
        b[self.id_at..self.id_at + ID_WIDTH].copy_from_slice(id);
        b.freeze()
    }
}

/// The fixtures, spread round-robin, and the run tag that keeps ids unique across runs.
#[derive(Debug, Clone)]
pub struct Bodies {
    templates: Vec<Template>,
    run: [u8; 8],
}

impl Bodies {
    pub fn new(templates: Vec<Template>, run: [u8; 8]) -> Bodies {
        assert!(!templates.is_empty(), "at least one template");
        Bodies { templates, run }
    }

    /// Reads every `*.json` in `dir` (sorted by name).
    pub fn load(dir: &Path, size: Option<usize>, run: [u8; 8]) -> Result<Bodies, BodyError> {
        let read_err = |source| BodyError::Read {
            path: dir.display().to_string(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(BodyError::Empty(dir.display().to_string()));
        }
        let mut templates = Vec::with_capacity(paths.len());
        for p in paths {
            let name = p.display().to_string();
            let bytes = std::fs::read(&p).map_err(|source| BodyError::Read {
                path: name.clone(),
                source,
            })?;
            templates.push(Template::new(&name, &bytes, size)?);
        }
        Ok(Bodies::new(templates, run))
    }

    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The `seq`-th request's event type and body: templates in turn, the id unique per `seq`.
    pub fn make(&self, seq: u64) -> (&str, Bytes) {
        let t = &self.templates[self.template_of(seq)];
        (&t.event_type, t.body(&event_id(self.run, seq)))
    }

    /// The index (in [`Self::templates`]) of the template the `seq`-th body is made from.
    pub fn template_of(&self, seq: u64) -> usize {
        (seq % self.templates.len() as u64) as usize
    }

    /// The event id of the `seq`-th request's body.
    pub fn event_id(&self, seq: u64) -> String {
        String::from_utf8_lossy(&event_id(self.run, seq)).into_owned()
    }

    /// Mean body length over one round of templates.
    pub fn mean_len(&self) -> f64 {
        self.templates.iter().map(Template::len).sum::<usize>() as f64 / self.templates.len() as f64
    }
}

/// A run tag of 8 lowercase alphanumerics from `seed` (e.g. the clock and the pid).
pub fn run_tag(seed: u64) -> [u8; 8] {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut tag = [0u8; 8];
    for c in &mut tag {
        // splitmix64 step
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        *c = ALPHABET[(z % 36) as usize];
    }
    tag
}

/// `evt_<run>_<seq, 16 digits>`.
pub fn event_id(run: [u8; 8], seq: u64) -> [u8; ID_WIDTH] {
    let mut id = [0u8; ID_WIDTH];
    id[..4].copy_from_slice(b"evt_");
    id[4..12].copy_from_slice(&run);
    id[12] = b'_';
    let mut v = seq;
    for i in (13..ID_WIDTH).rev() {
        id[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    id
}

/// Removes whitespace outside JSON strings, keeping every byte inside them (and key order).
pub fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    out
}

/// Adds `,"hookbridge_bench_padding":"xxx…"` before the closing brace of the top-level object
/// so the text is `size` bytes long, when it is shorter than that by more than the field itself.
pub fn pad(text: &mut Vec<u8>, size: usize) {
    while text.last().is_some_and(u8::is_ascii_whitespace) {
        text.pop();
    }
    let overhead = PADDING_FIELD.len() + 6; // ,"" : "" around the name and the value
    if text.len() + overhead >= size || text.last() != Some(&b'}') {
        return;
    }
    let fill = size - text.len() - overhead;
    let close = text.len() - 1;
    let mut field = Vec::with_capacity(overhead + fill);
    field.extend_from_slice(b",\"");
    field.extend_from_slice(PADDING_FIELD.as_bytes());
    field.extend_from_slice(b"\":\"");
    field.resize(field.len() + fill, b'x');
    field.push(b'"');
    text.splice(close..close, field);
}

/// Moves the member `"id":"…"` from first to last in a compacted object (`{"id":"…",…}`), and
/// returns where the id's characters now start (`id_at` when the text has another shape).
///
/// JSON gives member order no meaning, and the bridge reads the id wherever it is. But a body's
/// HMAC is computed from its first byte on, so with the id (the only part that differs between
/// bodies of a template) last, the load generator hashes everything before it once per template
/// and second ([`crate::verify::SigningPrefix`]) and only the last block or two per request: it
/// spends about 2 µs less per request on the cores it shares with what it measures.
fn id_last(text: &mut Vec<u8>, id_at: usize) -> usize {
    const OPEN: &[u8] = b"{\"id\":\"";
    let id_end = id_at + ID_WIDTH; // the id's closing quote
    if id_at != OPEN.len() || !text.starts_with(OPEN) || text.get(id_end..id_end + 2) != Some(b"\",".as_slice()) {
        return id_at;
    }
    let Some((&b'}', rest)) = text[id_end + 2..].split_last() else {
        return id_at;
    };
    let mut moved = Vec::with_capacity(text.len());
    moved.push(b'{');
    moved.extend_from_slice(rest);
    moved.push(b',');
    moved.extend_from_slice(&text[1..=id_end]);
    moved.push(b'}');
    debug_assert_eq!(moved.len(), text.len());
    *text = moved;
    text.len() - 2 - ID_WIDTH
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn parse(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn bodies_are_valid_json_with_unique_ids_and_the_fixture_type() {
        for size in [None, Some(1024), Some(4096), Some(16384)] {
            let bodies = Bodies::load(Path::new(FIXTURES), size, run_tag(7)).expect("fixtures load");
            let n = bodies.templates().len() as u64;
            assert!(n >= 5);
            let mut ids = HashSet::new();
            for seq in 0..3 * n {
                let (ty, body) = bodies.make(seq);
                let v = parse(&body);
                assert_eq!(v["type"].as_str(), Some(ty));
                let id = v["id"].as_str().expect("string id").to_string();
                assert_eq!(id.len(), ID_WIDTH);
                assert!(id.starts_with("evt_"));
                assert!(ids.insert(id), "duplicate id at seq {seq}");
                // The bridge's own reader agrees.
                let meta = crate::event::EventMeta::parse(&body).expect("EventMeta parses");
                assert_eq!(meta.event_type, ty);
            }
        }
    }

    #[test]
    fn size_pads_exactly_and_keeps_the_payload() {
        let fixture = std::fs::read(format!("{FIXTURES}/payment_intent.succeeded.json")).expect("fixture");
        for size in [4096usize, 16384] {
            let t = Template::new("pi", &fixture, Some(size)).expect("template");
            assert_eq!(t.len(), size);
            let body = t.body(&event_id(*b"abcdefgh", 42));
            let v = parse(&body);
            assert_eq!(v["id"], "evt_abcdefgh_0000000000000042");
            let pad = v[PADDING_FIELD].as_str().expect("padding field");
            assert!(pad.bytes().all(|b| b == b'x'));
            // Everything else is the fixture's content.
            let orig = parse(&fixture);
            let mut v = v;
            v.as_object_mut().expect("object").remove(PADDING_FIELD);
            v["id"] = orig["id"].clone();
            assert_eq!(v, orig);
        }
        // A body already larger than the size is compacted but not cut.
        let t = Template::new("pi", &fixture, Some(100)).expect("template");
        assert!(t.len() > 100 && t.len() < fixture.len());
        parse(&t.body(&event_id(*b"abcdefgh", 1)));
    }

    #[test]
    fn with_a_size_the_id_is_last_and_every_byte_before_it_is_the_templates() {
        let bodies = Bodies::load(Path::new(FIXTURES), Some(4096), run_tag(9)).expect("fixtures load");
        for seq in 0..bodies.templates().len() as u64 * 2 {
            let t = &bodies.templates()[bodies.template_of(seq)];
            let (_, body) = bodies.make(seq);
            let id = event_id(run_tag(9), seq);
            assert_eq!(&body[t.id_at()..t.id_at() + ID_WIDTH], &id[..]);
            assert!(body.ends_with(format!(",\"id\":\"{}\"}}", String::from_utf8_lossy(&id)).as_bytes()));
            assert_eq!(&body[..t.id_at()], &t.body(&event_id(*b"zzzzzzzz", 0))[..t.id_at()]);
        }
        // Without a size the fixture keeps its order: the id first, as Stripe sends it.
        let t = Template::new("pi", br#"{"id":"evt_1","type":"a.b"}"#, None).expect("template");
        assert_eq!(t.id_at(), 7);
        // A text of another shape keeps its id where it is.
        let t = Template::new("pi", br#"{"type":"a.b","id":"evt_1"}"#, Some(10)).expect("template");
        assert_eq!(&t.body(&event_id(*b"abcdefgh", 1))[..20], br#"{"type":"a.b","id":""#);
    }

    #[test]
    fn compact_keeps_strings_and_escapes() {
        let s = br#"{ "a" : "x y\" }" ,
            "b": [1, 2] }"#;
        assert_eq!(compact(s), br#"{"a":"x y\" }","b":[1,2]}"#.to_vec());
    }

    #[test]
    fn ids_differ_by_run_and_by_sequence() {
        assert_ne!(run_tag(1), run_tag(2));
        assert!(run_tag(3).iter().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(&event_id(*b"run00000", 12_345)[..], b"evt_run00000_0000000000012345");
        assert_ne!(event_id(*b"aaaaaaaa", 1), event_id(*b"aaaaaaab", 1));
    }

    #[test]
    fn non_events_are_refused() {
        assert!(Template::new("x", b"[1]", None).is_err());
        assert!(Template::new("x", br#"{"type":"a"}"#, None).is_err());
        assert!(Template::new("x", br#"{"id":"evt_1"}"#, None).is_err());
    }
}
