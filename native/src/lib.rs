//! Meshgate's native HTTP/1 head codec.
//!
//! Its calls, each one pass over untrusted bytes, each with the same interface and the same
//! answers as the Python reference in `src/meshgate/proxy/headcodec.py`:
//!
//! * `scan_request(data, extra)`: a read holding exactly one complete request head and nothing
//!   else.  Returns a tuple `(method, target, host, fields, fwd_fields)` when the gateway's fast
//!   path may take it, `0` when the full path must decide, or an HTTP status (400) when the head
//!   breaks the HTTP/1.1 grammar in a way the full path answers with that status.
//! * `scan_response(data)`: a read holding exactly one complete `Content-Length` response.
//!   Returns `(status, content_length, keep_alive, head, status_line, fields)` or `0`.
//! * `resp_fields(head)`: an upstream response head split into its status line and its fields
//!   with the hop-by-hop and framing fields removed; `None` when the Python code must do it.
//! * `relay_response(data, pre, post, below, absent)`: what `scan_response` accepts, with a
//!   canonical `HTTP/1.1 NNN reason` status line, a status below `below` and no field whose name
//!   starts with `absent` (lower case; empty: no such check), rewritten in one pass into
//!   the bytes the client gets: status line, relayed fields, `pre` (the gateway's Date and
//!   Server lines), `Content-Length`, `post` (e.g. `Connection: close`), the blank line, the
//!   body.  Returns `(status, keep_alive, content_length, out)` or `0`.
//!
//! The grammar is llhttp's (the full path's parser) in its strict mode, checked byte by byte
//! with the tables below; anything this codec is not sure to answer exactly as the full path
//! is deferred (`0`).  No `unsafe`, no indexing that can go out of bounds on any input, no
//! allocation but the returned objects, and work linear in the input.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

/// Heads longer than this take the full path (the Python fast path's LITE_MAX).
pub const LITE_MAX: usize = 4096;
/// The full path answers 431 beyond this many fields; the native codec leaves that to it.
pub const MAX_HEADERS: usize = 100;
/// Upstream response heads longer than this take the full path.
pub const MAX_RESP_HEAD: usize = 64 * 1024;
/// Connection tokens beyond this many: the Python code filters the fields.
const MAX_NAMED: usize = 32;

/// Request fields that need the full path's per-field handling (framing, hop-by-hop, identity
/// and forwarding headers): the same list as the Python fast path's skip pattern.
pub const SKIP_NAMES: &[&[u8]] = &[
    b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"http2-settings", b"proxy-authenticate", b"x-real-ip",
    b"forwarded", b"x-userinfo", b"x-id-token", b"x-access-token", b"x-credential-identifier",
];
pub const SKIP_PREFIXES: &[&[u8]] = &[b"x-forwarded-", b"x-envoy-", b"x-apisix-", b"x-consumer-"];
/// Response fields the gateway never relays (hop-by-hop, framing, its own Date and Server).
pub const RESP_DROP: &[&[u8]] = &[
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"http2-settings", b"server", b"date", b"content-length",
];
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// RFC 9110 tchar: what llhttp accepts in a field name.
const fn tchar_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        t[b] = !matches!(b as u8, b'"' | b'(' | b')' | b',' | b'/' | b':' | b';' | b'<' | b'=' | b'>' | b'?'
            | b'@' | b'[' | b'\\' | b']' | b'{' | b'}');
        b += 1;
    }
    t
}
static TCHAR: [bool; 256] = tchar_table();

/// What llhttp accepts in a field value: HTAB, SP, VCHAR and obs-text (no other CTL, no DEL).
#[inline]
fn value_byte(b: u8) -> bool {
    // no short-circuit: the chunked scan below compiles to vector compares
    ((b >= 0x20) & (b != 0x7f)) | (b == b'\t')
}

/// The first position at or after `i` holding a byte that is not a field-value byte (a valid
/// line stops at its CR): 16 bytes at a time, then byte by byte.
#[inline]
fn value_end(d: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = d.get(i..i + 16) {
        if !chunk.iter().fold(true, |ok, &b| ok & value_byte(b)) {
            break;
        }
        i += 16;
    }
    while i < d.len() && value_byte(d[i]) {
        i += 1;
    }
    i
}

#[derive(Debug, PartialEq, Eq)]
pub enum Req {
    /// The full path decides.
    Defer,
    /// The full path would answer this status.
    Error(u16),
    /// Fast path: offsets into the read.
    Accept { method: usize, target: (usize, usize), host: (usize, usize), eol: usize, hs: usize, he: usize },
}

/// One field line `Name: value` starting at `pos`; `Ok((name_end, value_start, value_end, next))`
/// with `next` the position after its CRLF, or `Err(())` when llhttp would refuse the line.
/// The value is trimmed of SP/HTAB on both sides (OWS is not part of it).
fn field_line(d: &[u8], pos: usize) -> Result<(usize, usize, usize, usize), ()> {
    let mut i = pos;
    while i < d.len() && TCHAR[d[i] as usize] {
        i += 1;
    }
    if i == pos || i >= d.len() || d[i] != b':' {
        return Err(());
    }
    let name_end = i;
    i += 1;
    while i < d.len() && (d[i] == b' ' || d[i] == b'\t') {
        i += 1;
    }
    let vs = i;
    i = value_end(d, i);
    if i + 1 >= d.len() || d[i] != b'\r' || d[i + 1] != b'\n' {
        return Err(());
    }
    let mut ve = i;
    while ve > vs && (d[ve - 1] == b' ' || d[ve - 1] == b'\t') {
        ve -= 1;
    }
    Ok((name_end, vs, ve, i + 2))
}

fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).all(|(a, b)| a.to_ascii_lowercase() == *b)
}

fn starts_lower(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && eq_lower(&name[..prefix.len()], prefix)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// The request head verdict (see the module doc).  `extra` is the lower-cased name of a
/// configured real-IP field other than X-Real-IP (empty when none): it takes the full path too.
pub fn scan_request(d: &[u8], extra: &[u8]) -> Req {
    let n = d.len();
    if !(4..=LITE_MAX).contains(&n) || &d[n - 4..] != b"\r\n\r\n" {
        return Req::Defer;
    }
    let eol = match find(d, b"\r\n", 0) {
        Some(e) => e,
        None => return Req::Defer,
    };
    // RFC 9112 3: one SP between the parts; llhttp tolerates more, the full path refuses them first
    if eol > 0 && find(&d[..eol], b"  ", 0).is_some() {
        return Req::Error(400);
    }
    if find(d, b"\r\n\r\n", 0) != Some(n - 4) {
        return Req::Defer;
    }
    let sp = match d[..eol].iter().position(|&b| b == b' ') {
        Some(s) => s,
        None => return Req::Defer,
    };
    let method = match METHODS.iter().position(|m| m.as_bytes() == &d[..sp]) {
        Some(m) => m,
        None => return Req::Defer, // llhttp knows many more methods: the full path decides
    };
    let ts = sp + 1;
    if d.get(ts) != Some(&b'/') {
        return Req::Defer; // asterisk or absolute form
    }
    let mut te = ts;
    while te < eol && d[te] != b' ' {
        let b = d[te];
        if !(0x21..=0x7e).contains(&b) {
            return if b == b'\r' || b == b'\n' { Req::Defer } else { Req::Error(400) };
        }
        te += 1;
    }
    if te + 9 != eol || &d[te..eol] != b" HTTP/1.1" {
        return Req::Defer; // HTTP/1.0, HTTP/0.9, other versions, anything after the version
    }
    let mut pos = eol + 2;
    let mut count = 0usize;
    let mut host: Option<(usize, usize, usize, usize)> = None; // (value start, value end, hs, he)
    let mut hosts = 0usize;
    while pos < n - 2 {
        let (name_end, vs, ve, next) = match field_line(d, pos) {
            Ok(f) => f,
            Err(()) => return Req::Error(400),
        };
        count += 1;
        if count > MAX_HEADERS {
            return Req::Defer;
        }
        let name = &d[pos..name_end];
        if SKIP_NAMES.iter().any(|s| eq_lower(name, s))
            || SKIP_PREFIXES.iter().any(|p| starts_lower(name, p))
            || (!extra.is_empty() && eq_lower(name, extra))
        {
            return Req::Defer;
        }
        if eq_lower(name, b"host") {
            hosts += 1;
            host = Some((vs, ve, pos - 2, next - 2));
        }
        pos = next;
    }
    if pos != n - 2 {
        return Req::Defer;
    }
    match (hosts, host) {
        (1, Some((vs, ve, hs, he))) => {
            if vs == ve {
                return Req::Error(400); // empty Host
            }
            Req::Accept { method, target: (ts, te), host: (vs, ve), eol, hs, he }
        }
        (0, _) => Req::Error(400), // HTTP/1.1 without Host
        _ => Req::Error(400),      // Host repeated
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub sl: usize,  // the status line's CRLF
    pub end: usize, // the blank line's CRLF starts at end + 2
    pub cl: u64,
    pub keep_alive: bool,
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |a, &b| a * 10 + u64::from(b - b'0')))
}

/// The response verdict: `Some` when `d` is exactly one complete HTTP/1.1 response with one
/// `Content-Length`, a status with a body, and a head llhttp accepts.
pub fn scan_response(d: &[u8]) -> Option<Resp> {
    scan_resp(d, |_, _, _| true)
}

/// `scan_response`, calling `line(start, name_end, next)` for every field line it accepts;
/// `line` returning false makes the scan give up (`None`).
fn scan_resp<F: FnMut(usize, usize, usize) -> bool>(d: &[u8], mut line: F) -> Option<Resp> {
    if d.len() < 14 || &d[..9] != b"HTTP/1.1 " {
        return None;
    }
    let code = &d[9..12];
    if !code.iter().all(u8::is_ascii_digit) || !(d[12] == b' ' || d[12] == b'\r') {
        return None;
    }
    let status = code.iter().fold(0u16, |a, &b| a * 10 + u16::from(b - b'0'));
    if status < 200 || status == 204 || status == 304 {
        return None;
    }
    // the reason phrase: llhttp takes any byte but CR and LF
    let mut i = 12;
    while i < d.len() && d[i] != b'\r' && d[i] != b'\n' {
        i += 1;
    }
    if i + 1 >= d.len() || d[i] != b'\r' || d[i + 1] != b'\n' {
        return None;
    }
    let sl = i;
    let mut pos = i + 2;
    let mut cl: Option<u64> = None;
    let mut keep_alive = true;
    let mut conns = 0;
    loop {
        if pos + 1 >= d.len() || pos > MAX_RESP_HEAD {
            return None;
        }
        if d[pos] == b'\r' && d[pos + 1] == b'\n' {
            break;
        }
        let (name_end, vs, ve, next) = field_line(d, pos).ok()?;
        let name = &d[pos..name_end];
        if eq_lower(name, b"content-length") {
            if cl.is_some() {
                return None;
            }
            cl = Some(digits(&d[vs..ve])?);
        } else if eq_lower(name, b"transfer-encoding") {
            return None;
        } else if eq_lower(name, b"connection") {
            // llhttp's keep-alive verdict, for the values whose verdict is plain (else the full path)
            conns += 1;
            let v = &d[vs..ve];
            if conns > 1 || !(eq_lower(v, b"close") || eq_lower(v, b"keep-alive")) {
                return None;
            }
            keep_alive = !eq_lower(v, b"close");
        } else if eq_lower(name, b"upgrade") || eq_lower(name, b"proxy-connection") {
            return None;
        }
        if !line(pos, name_end, next) {
            return None;
        }
        pos = next;
    }
    let end = pos - 2;
    let cl = cl?;
    let total = (end as u64).checked_add(4)?.checked_add(cl)?;
    if total != d.len() as u64 {
        return None;
    }
    Some(Resp { status, sl, end, cl, keep_alive })
}

fn trim(t: &[u8]) -> &[u8] {
    let mut s = 0;
    let mut e = t.len();
    while s < e && (t[s] == b' ' || t[s] == b'\t') {
        s += 1;
    }
    while e > s && (t[e - 1] == b' ' || t[e - 1] == b'\t') {
        e -= 1;
    }
    &t[s..e]
}

/// `head` (status line and field lines, each ending CRLF) as (status line, the fields to relay,
/// each as "\r\nName: value").  The fields named by the first Connection field are dropped too
/// (RFC 9110 7.6.1).  `None` when a line is not a valid field line or there are too many names.
pub fn resp_fields(head: &[u8]) -> Option<(usize, Vec<u8>)> {
    let sl = find(head, b"\r\n", 0)?;
    let mut lines: Vec<(usize, usize, usize)> = Vec::new(); // (start, name end, next)
    let mut named: Vec<Vec<u8>> = Vec::new();
    let mut seen_conn = false;
    let mut pos = sl + 2;
    while pos < head.len() {
        let (name_end, vs, ve, next) = field_line(head, pos).ok()?;
        let name = &head[pos..name_end];
        if !seen_conn && eq_lower(name, b"connection") {
            seen_conn = true;
            for t in head[vs..ve].split(|&b| b == b',') {
                let t = trim(t).to_ascii_lowercase();
                if !t.is_empty() && t != b"close" && t != b"keep-alive" && t != b"upgrade" {
                    if named.len() == MAX_NAMED {
                        return None;
                    }
                    named.push(t);
                }
            }
        }
        lines.push((pos, name_end, next));
        pos = next;
    }
    let mut out = Vec::with_capacity(head.len() - sl);
    for (start, name_end, next) in lines {
        let name = &head[start..name_end];
        if RESP_DROP.iter().any(|s| eq_lower(name, s)) || named.iter().any(|s| eq_lower(name, s)) {
            continue;
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&head[start..next - 2]);
    }
    Some((sl, out))
}

/// Field lines a whole-response relay keeps (more: the general path).
const RELAY_LINES: usize = 48;

/// What `relay_response` writes: the response's status and framing, the field lines kept
/// (start, end before CRLF), and the output's length.
pub struct Relay {
    pub resp: Resp,
    lines: [(usize, usize); RELAY_LINES],
    n: usize,
    cl_digits: ([u8; 20], usize),
    pub len: usize,
}

/// The whole response for the client (see the module doc: `relay_response`) in one pass over
/// `d`: `None` when the caller must take the general path.  Connection fields other than a
/// plain `close` or `keep-alive` make `scan_response` defer, so no field is hop-by-hop by name.
pub fn relay_plan(d: &[u8], pre: &[u8], post: &[u8], below: u16, absent: &[u8]) -> Option<Relay> {
    let mut lines = [(0usize, 0usize); RELAY_LINES];
    let mut n = 0;
    let mut kept = 0;
    let resp = scan_resp(d, |start, name_end, next| {
        let name = &d[start..name_end];
        if !absent.is_empty() && starts_lower(name, absent) {
            return false;   // a field the caller would add: its general path replaces it
        }
        if RESP_DROP.iter().any(|s| eq_lower(name, s)) {
            return true;
        }
        if n == RELAY_LINES {
            return false;
        }
        lines[n] = (start, next - 2);
        kept += next - start;  // CRLF + the line
        n += 1;
        true
    })?;
    if resp.status >= below {
        return None;
    }
    // a status line the general path would rewrite (no reason phrase, trailing whitespace)
    let sl = resp.sl;
    if sl < 14 || d[sl - 1] == b' ' || d[sl - 1] == b'\t' {
        return None;
    }
    let mut digits = [0u8; 20];
    let mut k = 20;
    let mut v = resp.cl;
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let body = d.len() - (resp.end + 4);
    let len = sl + kept + 2 + pre.len() + 16 + (20 - k) + 2 + post.len() + 2 + body;
    Some(Relay { resp, lines, n, cl_digits: (digits, k), len })
}

/// Writes the relayed response planned by `relay_plan` into `out` (exactly `plan.len` bytes).
pub fn relay_fill(plan: &Relay, d: &[u8], pre: &[u8], post: &[u8], out: &mut [u8]) {
    let mut at = 0;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(&d[..plan.resp.sl]);
    for &(start, end) in &plan.lines[..plan.n] {
        put(b"\r\n");
        put(&d[start..end]);
    }
    put(b"\r\n");
    put(pre);
    put(b"Content-Length: ");
    put(&plan.cl_digits.0[plan.cl_digits.1..]);
    put(b"\r\n");
    put(post);
    put(b"\r\n");
    put(&d[plan.resp.end + 4..]);
}

/// `relay_plan` and `relay_fill` into a new vector: `(status, keep_alive, out)`.
pub fn relay_response(d: &[u8], pre: &[u8], post: &[u8], below: u16, absent: &[u8])
        -> Option<(u16, bool, Vec<u8>)> {
    let plan = relay_plan(d, pre, post, below, absent)?;
    let mut out = vec![0u8; plan.len];
    relay_fill(&plan, d, pre, post, &mut out);
    Some((plan.resp.status, plan.resp.keep_alive, out))
}

/// Where the field `lname` (ASCII, lower case) is in a request's field block (`fields` of
/// `scan_request`: each line after a CRLF, no CRLF at the end), as `meshgate.http.request.
/// find_field` finds it: the first line that starts, case-insensitively, with `lname` and a
/// colon; its value up to the next CRLF, trimmed of SP/HTAB.  `Repeated` when another line
/// after it starts the same way (the caller joins them).  At most two passes over the block.
#[derive(Debug, PartialEq, Eq)]
pub enum Field {
    Absent,
    At(usize, usize),
    Repeated,
}

fn line_is(d: &[u8], crlf: usize, lname: &[u8]) -> bool {
    let s = crlf + 2;
    let e = s + lname.len();
    e < d.len() && d[e] == b':' && eq_lower(&d[s..e], lname)
}

pub fn find_field(d: &[u8], lname: &[u8]) -> Field {
    let mut i = 0;
    while let Some(p) = find(d, b"\r\n", i) {
        if line_is(d, p, lname) {
            let vs = p + 2 + lname.len() + 1;
            let Some(ve) = find(d, b"\r\n", vs) else {
                return Field::At(vs, d.len());
            };
            let mut j = ve;
            while let Some(q) = find(d, b"\r\n", j) {
                if line_is(d, q, lname) {
                    return Field::Repeated;
                }
                j = q + 2;
            }
            return Field::At(vs, ve);
        }
        i = p + 2;
    }
    Field::Absent
}

fn latin1<'py>(py: Python<'py>, v: &[u8]) -> Bound<'py, PyString> {
    if v.is_ascii() {
        PyString::new(py, std::str::from_utf8(v).unwrap_or_default())
    } else {
        let s: String = v.iter().map(|&b| char::from(b)).collect();
        PyString::new(py, &s)
    }
}

// -- the Python module ---------------------------------------------------------------------

/// `find_field(fields, name)`: the value (str, latin-1, trimmed) of the field `name` in a
/// request's field block, None when it is absent, 1 when it is repeated or `name` is not ASCII
/// (the caller then looks it up in the full index).
#[pyfunction(name = "find_field")]
fn py_find_field<'py>(py: Python<'py>, fields: &[u8], name: &str) -> PyResult<Bound<'py, PyAny>> {
    if !name.is_ascii() {
        return 1i64.into_bound_py_any(py);
    }
    let lname = name.as_bytes().to_ascii_lowercase();
    match find_field(fields, &lname) {
        Field::Absent => Ok(py.None().into_bound(py)),
        Field::Repeated => 1i64.into_bound_py_any(py),
        Field::At(s, e) => {
            let mut s = s;
            let mut e = e;
            while s < e && (fields[s] == b' ' || fields[s] == b'\t') {
                s += 1;
            }
            while e > s && (fields[e - 1] == b' ' || fields[e - 1] == b'\t') {
                e -= 1;
            }
            Ok(latin1(py, &fields[s..e]).into_any())
        }
    }
}

#[pyfunction(name = "scan_request")]
fn py_scan_request<'py>(py: Python<'py>, data: &Bound<'py, PyBytes>, extra: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let d = data.as_bytes();
    match scan_request(d, extra) {
        Req::Defer => 0i64.into_bound_py_any(py),
        Req::Error(s) => i64::from(s).into_bound_py_any(py),
        Req::Accept { method, target, host, eol, hs, he } => {
            let m = match method {
                0 => intern!(py, "GET"),
                1 => intern!(py, "HEAD"),
                2 => intern!(py, "POST"),
                3 => intern!(py, "PUT"),
                4 => intern!(py, "DELETE"),
                5 => intern!(py, "PATCH"),
                _ => intern!(py, "OPTIONS"),
            };
            let n = d.len();
            // a field value may hold obs-text: decode as latin-1, as the Python code does
            let host_s = latin1(py, &d[host.0..host.1]);
            let mut fwd = Vec::with_capacity(n - 4 - eol - (he - hs));
            fwd.extend_from_slice(&d[eol..hs]);
            fwd.extend_from_slice(&d[he..n - 4]);
            PyTuple::new(py, [
                m.clone().into_any(),
                PyBytes::new(py, &d[target.0..target.1]).into_any(),
                host_s.into_any(),
                PyBytes::new(py, &d[eol..n - 4]).into_any(),
                PyBytes::new(py, &fwd).into_any(),
            ])
            .map(Bound::into_any)
        }
    }
}

#[pyfunction(name = "scan_response")]
fn py_scan_response<'py>(py: Python<'py>, data: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyAny>> {
    let d = data.as_bytes();
    let Some(r) = scan_response(d) else {
        return 0i64.into_bound_py_any(py);
    };
    let head = &d[..r.end + 2];
    let Some((sl, fields)) = resp_fields(head) else {
        return 0i64.into_bound_py_any(py);
    };
    PyTuple::new(py, [
        i64::from(r.status).into_bound_py_any(py)?,
        r.cl.into_bound_py_any(py)?,
        r.keep_alive.into_bound_py_any(py)?,
        PyBytes::new(py, head).into_any(),
        PyBytes::new(py, &head[..sl]).into_any(),
        PyBytes::new(py, &fields).into_any(),
    ])
    .map(Bound::into_any)
}

#[pyfunction(name = "relay_response")]
fn py_relay_response<'py>(py: Python<'py>, data: &[u8], pre: &[u8], post: &[u8], below: u16, absent: &[u8])
        -> PyResult<Bound<'py, PyAny>> {
    let Some(plan) = relay_plan(data, pre, post, below, absent) else {
        return 0i64.into_bound_py_any(py);
    };
    let out = PyBytes::new_with(py, plan.len, |buf| {
        relay_fill(&plan, data, pre, post, buf);
        Ok(())
    })?;
    PyTuple::new(py, [
        i64::from(plan.resp.status).into_bound_py_any(py)?,
        plan.resp.keep_alive.into_bound_py_any(py)?,
        plan.resp.cl.into_bound_py_any(py)?,
        out.into_any(),
    ])
    .map(Bound::into_any)
}

#[pyfunction(name = "resp_fields")]
fn py_resp_fields<'py>(py: Python<'py>, head: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match resp_fields(head) {
        Some((sl, fields)) => PyTuple::new(py, [PyBytes::new(py, &head[..sl]), PyBytes::new(py, &fields)])
            .map(Bound::into_any),
        None => Ok(py.None().into_bound(py)),
    }
}

#[pymodule]
fn _codec(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(py_scan_request, m)?)?;
    m.add_function(wrap_pyfunction!(py_scan_response, m)?)?;
    m.add_function(wrap_pyfunction!(py_resp_fields, m)?)?;
    m.add_function(wrap_pyfunction!(py_find_field, m)?)?;
    m.add_function(wrap_pyfunction!(py_relay_response, m)?)?;
    let as_tuple = |items: &[&[u8]]| PyTuple::new(py, items.iter().map(|s| PyBytes::new(py, s)));
    m.add("SKIP_NAMES", as_tuple(SKIP_NAMES)?)?;
    m.add("SKIP_PREFIXES", as_tuple(SKIP_PREFIXES)?)?;
    m.add("RESP_DROP", as_tuple(RESP_DROP)?)?;
    m.add("LITE_MAX", LITE_MAX)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_plain_get() {
        let d = b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
        match scan_request(d, b"") {
            Req::Accept { method, target, host, .. } => {
                assert_eq!(method, 0);
                assert_eq!(&d[target.0..target.1], b"/a?b");
                assert_eq!(&d[host.0..host.1], b"example.com");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verdicts() {
        let cases: &[(&[u8], Req)] = &[
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.1\r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.1\r\nHost:  \r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n fold\r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", Req::Error(400)),
            (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", Req::Error(400)),
            (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", Req::Defer),
            (b"PRI * HTTP/2.0\r\n\r\n", Req::Defer),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Req::Defer),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", Req::Defer),
            (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Req::Defer),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Req::Defer),
        ];
        for (d, want) in cases {
            assert_eq!(&scan_request(d, b""), want, "{:?}", String::from_utf8_lossy(d));
        }
        assert_eq!(scan_request(b"GET / HTTP/1.1\r\nHost: a\r\nCF-Connecting-IP: 1.2.3.4\r\n\r\n", b"cf-connecting-ip"),
                   Req::Defer);
    }

    #[test]
    fn responses() {
        let d = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close\r\nX-A: b\r\n\r\nok";
        let r = scan_response(d).unwrap();
        assert_eq!((r.status, r.cl, r.keep_alive), (200, 2, false));
        let (sl, fields) = resp_fields(&d[..r.end + 2]).unwrap();
        assert_eq!(&d[..sl], b"HTTP/1.1 200 OK");
        assert_eq!(fields, b"\r\nX-A: b");
        assert!(scan_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok").is_none());
        assert!(scan_response(b"HTTP/1.1 204 OK\r\nContent-Length: 0\r\n\r\n").is_none());
        assert!(scan_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_none());
        for odd in [&b"Connection: closed"[..], b"Connection: x, close", b"Upgrade: h2c", b"Proxy-Connection: close"] {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
            r.extend_from_slice(odd);
            r.extend_from_slice(b"\r\n\r\n");
            assert!(scan_response(&r).is_none(), "{}", String::from_utf8_lossy(odd));
        }
        let h = b"HTTP/1.1 200 OK\r\nConnection: x-hop, close\r\nX-Hop: 1\r\nServer: s\r\nX-Keep: 2\r\n";
        assert_eq!(resp_fields(h).unwrap().1, b"\r\nX-Keep: 2");
    }

    #[test]
    fn relays_whole_responses() {
        let d = b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok";
        let (status, keep, out) = relay_response(d, b"Date: x\r\n", b"Connection: close\r\n", 500, b"").unwrap();
        assert_eq!((status, keep), (200, true));
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nX-A: b\r\nDate: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        assert!(relay_response(d, b"", b"", 200, b"").is_none());
        for odd in [&b"HTTP/1.1 200\r\n"[..], b"HTTP/1.1 200 \r\n", b"HTTP/1.1 200 OK \r\n"] {
            let mut r = odd.to_vec();
            r.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            assert!(relay_response(&r, b"", b"", 500, b"").is_none(), "{}", String::from_utf8_lossy(odd));
        }
        let mut many = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n".to_vec();
        for _ in 0..RELAY_LINES {
            many.extend_from_slice(b"X-A: b\r\n");
        }
        many.extend_from_slice(b"Server: s\r\n\r\nz");
        let (_, _, out) = relay_response(&many, b"", b"", 500, b"").unwrap();
        assert!(out.ends_with(b"X-A: b\r\nContent-Length: 1\r\n\r\nz"));
        many.splice(17..17, b"X-B: c\r\n".iter().copied());
        assert!(relay_response(&many, b"", b"", 500, b"").is_none(), "more kept lines than RELAY_LINES");
        let rl = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-RateLimit-Limit: 3\r\n\r\n";
        assert!(relay_response(rl, b"", b"", 500, b"x-ratelimit-").is_none());
        assert!(relay_response(rl, b"", b"", 500, b"x-ratelimit-reset").is_some());
        let (_, _, out) = relay_response(b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n", b"", b"", 500, b"").unwrap();
        assert_eq!(out, b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn finds_fields() {
        let d = b"\r\nHost: a\r\nApiKey:  k1 \t\r\nX-A: 1\r\nx-a: 2\r\nLast:z";
        assert_eq!(find_field(d, b"apikey"), Field::At(18, 24));
        assert_eq!(find_field(d, b"x-a"), Field::Repeated);
        assert_eq!(find_field(d, b"last"), Field::At(d.len() - 1, d.len()));
        assert_eq!(find_field(d, b"host"), Field::At(7, 9));
        assert_eq!(find_field(d, b"hos"), Field::Absent);
        assert_eq!(find_field(d, b"apikey:"), Field::Absent);
        assert_eq!(find_field(b"", b"a"), Field::Absent);
        assert_eq!(find_field(b"\r\na:", b"a"), Field::At(4, 4));
        assert_eq!(find_field(b"\r\na:\r\n", b"a"), Field::At(4, 4));
        for n in 0..d.len() {
            let _ = find_field(&d[..n], b"x-a");
        }
    }

    #[test]
    fn never_panics_on_prefixes() {
        let d = b"GET /x HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
        for i in 0..=d.len() {
            let _ = scan_request(&d[..i], b"");
            let _ = scan_response(&d[..i]);
            let _ = resp_fields(&d[..i]);
            let _ = relay_response(&d[..i], b"", b"", 600, b"");
        }
    }
}
