//! The demo's accounts: create an account, sign in, see who is signed in,
//! sign out. Accounts and sessions are kept in `wasi:keyvalue@0.2.0-draft`
//! (the bucket `""`: the first store granted to the route), the version
//! `wasmtime serve -S keyvalue` links too; passwords as Argon2id hashes,
//! never in clear. It is the built-in guest `builtin:accounts`, which the
//! demo mounts on `/account` (`wasmhttpd.toml`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /account/` | who is signed in, with a form to sign out; or a form to sign in |
//! | `GET /account` | 301 to `/account/` |
//! | `POST /account/register`: `name`, `email`, `password` | 201, the account stored; 409 when the name is taken |
//! | `POST /account/signin`: `name`, `password` | 303 to `/account/` with a session cookie; 401 for a wrong name or password, the same page and the same work whether the name exists or not; 429 with `Retry-After` while the name is paused after failed sign-ins |
//! | `POST /account/signout` | 303 to `/account/`, the session ended and its cookie removed |
//! | a missing or empty field | 400, a page naming it |
//! | a body that is not a form / malformed / over [`MAX_BODY`] | 415 / 400 / 413 |
//! | another method | 405 with `Allow` |
//! | the store refusing or down | 503 |
//!
//! The session cookie is `HttpOnly` and `SameSite=Lax`, `Secure` when the
//! request came over HTTPS, and lasts [`SESSION_SECONDS`].
//!
//! Guessing is made slow and tells nothing. A name that does not exist
//! costs the same Argon2id check as a wrong password (against a fixed hash
//! of the same parameters) and gets the same answer, so neither the time
//! nor the page tells which names exist. Failed sign-ins are counted per
//! name, whether it exists or not: after [`FREE_FAILURES`] in a row the
//! name is paused for [`FIRST_PAUSE_SECONDS`], twice as long after each
//! failure past that, up to [`MAX_PAUSE_SECONDS`]; a successful sign-in
//! starts the count again, and one that fails is forgotten after
//! [`MAX_PAUSE_SECONDS`]. A session is kept under the SHA-256 of its token,
//! so neither the store nor a look-up sees the token itself, and the
//! stored digest is compared in constant time. The host's rate limit on
//! the route (`wasmhttpd.toml`) bounds how often each client may try.

pub mod form;

#[allow(missing_docs, unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wasmhttpd:guest/accounts",
        generate_all,
        features: ["clocks-timezone"],
    });
}

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use bindings::exports::wasi::http::incoming_handler::Guest;
use bindings::wasi::clocks::wall_clock;
use bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam, Scheme,
};
use bindings::wasi::io::streams::StreamError;
use bindings::wasi::keyvalue0_2_0_draft::{atomics, store};
use bindings::wasi::random::random;
use wasmhttpd_pages::escape;

/// The largest form body this guest reads: an account form is a few
/// hundred bytes; 16 KiB leaves room for long names and notes.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a session lasts once signed in: a day.
pub const SESSION_SECONDS: u64 = 24 * 60 * 60;
/// Longest account name, in characters.
const MAX_NAME: usize = 64;
/// Shortest password, in characters.
const MIN_PASSWORD: usize = 8;
/// The session cookie's name.
const COOKIE: &str = "session";
/// Failed sign-ins in a row a name may have before it is paused.
pub const FREE_FAILURES: u64 = 5;
/// The first pause, after [`FREE_FAILURES`] failed sign-ins.
pub const FIRST_PAUSE_SECONDS: u64 = 30;
/// The longest pause; a failed sign-in older than this is forgotten.
pub const MAX_PAUSE_SECONDS: u64 = 60 * 60;
/// What a sign-in for a name without an account is checked against: an
/// Argon2id hash with the parameters of every account's
/// (`Argon2::default()`), of a password no account has, so that it costs
/// what a wrong password does.
const NO_ACCOUNT_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$CzBVep/E6Q4zWH2ix+wRNg$\
                               3sbc2cvsNCQbpu+EMMlj48YRw3FHzRml9bWfOYyXSvM";

struct Component;

// The generated export glue is `unsafe` FFI; the handler itself is safe code.
#[allow(unsafe_code)]
mod export {
    use super::{Component, bindings};
    bindings::export!(Component with_types_in bindings);
}

/// A response: status, header fields, an HTML page (or none).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    page: String,
}

impl Reply {
    fn page(status: u16, title: &str, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            page: page(title, body),
        }
    }

    fn see_other(location: &str) -> Reply {
        Reply {
            status: 303,
            headers: vec![("location".to_owned(), location.to_owned())],
            page: String::new(),
        }
    }

    fn with(mut self, name: &str, value: String) -> Reply {
        self.headers.push((name.to_owned(), value));
        self
    }
}

impl Guest for Component {
    fn handle(request: IncomingRequest, outparam: ResponseOutparam) {
        send(outparam, answer(request));
    }
}

/// What a request gets.
fn answer(request: IncomingRequest) -> Reply {
    let target = request.path_with_query().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let (base, action) = match path.rsplit_once('/') {
        Some((base, action)) => (base.to_owned(), action.to_owned()),
        None => (String::new(), path.clone()),
    };
    let secure = matches!(request.scheme(), Some(Scheme::Https));
    let cookie = session_cookie(&request);
    let method = request.method();
    match (action.as_str(), method) {
        ("", Method::Get | Method::Head) => home(&base, cookie.as_deref()),
        (_, Method::Get | Method::Head) if !path.ends_with('/') && !is_action(&action) => Reply {
            status: 301,
            headers: vec![("location".to_owned(), format!("{path}/"))],
            page: String::new(),
        },
        ("register" | "signin" | "signout", Method::Post) => {
            let fields = match read_form(request) {
                Ok(fields) => fields,
                Err(reply) => return reply,
            };
            let done = match action.as_str() {
                "register" => register(&base, &fields),
                "signin" => sign_in(&base, &fields, secure),
                _ => sign_out(&base, cookie.as_deref(), secure),
            };
            done.unwrap_or_else(unavailable)
        }
        (action, _) if is_action(action) => {
            Reply::page(405, "Method Not Allowed", "<p>Send the form with POST.</p>")
                .with("allow", "POST".to_owned())
        }
        _ => Reply::page(
            405,
            "Method Not Allowed",
            "<p>This page can only be read.</p>",
        )
        .with("allow", "GET, HEAD".to_owned()),
    }
}

fn is_action(segment: &str) -> bool {
    matches!(segment, "register" | "signin" | "signout")
}

/// The page of `/account/`: who is signed in, or a form to sign in.
fn home(base: &str, cookie: Option<&str>) -> Reply {
    let signed_in = match cookie.map(session_name).transpose() {
        Ok(name) => name.flatten(),
        Err(err) => return unavailable(err),
    };
    match signed_in {
        Some(name) => Reply::page(
            200,
            "Your account",
            &format!(
                "<p class=\"lead\">Signed in as <strong id=\"who\">{}</strong>.</p>\n\
                 <form class=\"form\" method=\"post\" action=\"{base}/signout\">\
                 <button class=\"button\" type=\"submit\">Sign out</button></form>",
                escape(&name)
            ),
        ),
        None => Reply::page(200, "Sign in", &sign_in_form(base, "")),
    }
}

fn sign_in_form(base: &str, name: &str) -> String {
    format!(
        "<form class=\"form\" method=\"post\" action=\"{base}/signin\">\n\
         <label>Name <input name=\"name\" required autocomplete=\"username\" value=\"{}\"></label>\n\
         <label>Password <input name=\"password\" type=\"password\" required \
         autocomplete=\"current-password\"></label>\n\
         <button class=\"button\" type=\"submit\">Sign in</button>\n</form>\n\
         <p>No account yet? <a href=\"/register.html\">Create one</a>.</p>",
        escape(name)
    )
}

/// The store: the first one granted to the route.
fn bucket() -> Result<store::Bucket, store::Error> {
    store::open("")
}

/// `POST register`: stores a new account.
fn register(base: &str, fields: &[(String, String)]) -> Result<Reply, store::Error> {
    let [name, email, password] = match required(fields, ["name", "email", "password"]) {
        Ok(values) => values,
        Err(reply) => return Ok(reply),
    };
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Ok(Reply::page(
            400,
            "Choose another name",
            &format!("<p>A name is {MAX_NAME} characters at most, without control characters.</p>"),
        ));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Ok(Reply::page(
            400,
            "Choose a longer password",
            &format!("<p>A password has {MIN_PASSWORD} characters at least.</p>"),
        ));
    }
    let bucket = bucket()?;
    // The name is claimed atomically: of two registrations at once, one
    // counts 1 and keeps it.
    if atomics::increment(&bucket, &format!("claim:{name}"), 1)? != 1 {
        return Ok(Reply::page(
            409,
            "That name is taken",
            &format!(
                "<p>An account named <strong>{}</strong> exists already. Choose another name, \
                 or <a href=\"{base}/\">sign in</a>.</p>",
                escape(&name)
            ),
        ));
    }
    let hash = hash_password(&password);
    bucket.set(
        &format!("account:{name}"),
        format!("{email}\n{hash}").as_bytes(),
    )?;
    Ok(Reply::page(
        201,
        "Account created",
        &format!(
            "<p class=\"lead\">Welcome, <strong>{}</strong>. Your account is stored; sign in \
             to use it.</p>\n{}",
            escape(&name),
            sign_in_form(base, &name)
        ),
    ))
}

/// `POST signin`: checks the password and starts a session.
fn sign_in(base: &str, fields: &[(String, String)], secure: bool) -> Result<Reply, store::Error> {
    let [name, password] = match required(fields, ["name", "password"]) {
        Ok(values) => values,
        Err(reply) => return Ok(reply),
    };
    let bucket = bucket()?;
    // A name no account can have (registration refuses it) is not looked
    // up, but it is checked and counted like any other.
    let possible = name.chars().count() <= MAX_NAME && !name.chars().any(char::is_control);
    let failures = Failures::of(&name);
    if let Some(wait) = failures.paused(&bucket, now())? {
        return Ok(Reply::page(
            429,
            "Too many failed sign-ins",
            &format!(
                "<p>Sign-ins with this name failed too many times in a row, so they are \
                 paused: try again in {}.</p>",
                duration(wait)
            ),
        )
        .with("retry-after", wait.to_string()));
    }
    let account = match possible {
        true => bucket.get(&format!("account:{name}"))?,
        false => None,
    };
    let hash = account.as_deref().and_then(|account| {
        let text = std::str::from_utf8(account).ok()?;
        Some(text.split_once('\n')?.1.to_owned())
    });
    // The same check whether the name has an account or not.
    let matches = check_password(&password, hash.as_deref().unwrap_or(NO_ACCOUNT_HASH));
    if !(matches && hash.is_some()) {
        failures.failed(&bucket, now())?;
        return Ok(Reply::page(
            401,
            "Wrong name or password",
            &format!(
                "<p>No account has that name and password.</p>\n{}",
                sign_in_form(base, &name)
            ),
        ));
    }
    failures.forget(&bucket)?;
    let token = hex(&random::get_random_bytes(32));
    let expires = now() + SESSION_SECONDS;
    bucket.set(
        &session_key(&token),
        format!("{name}\n{expires}\n{}", hex(&digest(&token))).as_bytes(),
    )?;
    Ok(Reply::see_other(&format!("{base}/"))
        .with("set-cookie", cookie(&token, SESSION_SECONDS, secure)))
}

/// Whether `password` is the one `hash` (a PHC string) was made from: an
/// Argon2id check of the parameters the hash names, said in the log so
/// that the work each sign-in does can be seen.
fn check_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(hash) else {
        return false;
    };
    eprintln!(
        "sign-in: checked a password against an {} hash ({})",
        parsed.algorithm, parsed.params
    );
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A name's failed sign-ins in a row (`failures:ID`, counted atomically)
/// and when the last one was (`failed-at:ID`), under an ID made from the
/// name's digest: keys of one length, whatever name a guesser sends, and
/// no name a guesser made up kept in the store.
struct Failures {
    count: String,
    last: String,
}

impl Failures {
    fn of(name: &str) -> Failures {
        let id = hex(&digest(name)[..16]);
        Failures {
            count: format!("failures:{id}"),
            last: format!("failed-at:{id}"),
        }
    }

    /// The seconds left of the name's pause at `now`, if it is paused.
    fn paused(&self, bucket: &store::Bucket, now: u64) -> Result<Option<u64>, store::Error> {
        // An increment by nothing reads the count as it stands.
        let count = atomics::increment(bucket, &self.count, 0)?;
        if count < FREE_FAILURES {
            return Ok(None);
        }
        let last = self.last(bucket)?;
        let until = last.saturating_add(pause(count));
        Ok((now < until && now.saturating_sub(last) < MAX_PAUSE_SECONDS).then(|| until - now))
    }

    /// Counts a failed sign-in at `now`; one older than the longest pause
    /// before it is forgotten first.
    fn failed(&self, bucket: &store::Bucket, now: u64) -> Result<(), store::Error> {
        if now.saturating_sub(self.last(bucket)?) >= MAX_PAUSE_SECONDS {
            bucket.delete(&self.count)?;
        }
        atomics::increment(bucket, &self.count, 1)?;
        bucket.set(&self.last, now.to_string().as_bytes())
    }

    /// Starts the count again, after a successful sign-in.
    fn forget(&self, bucket: &store::Bucket) -> Result<(), store::Error> {
        bucket.delete(&self.count)?;
        bucket.delete(&self.last)
    }

    fn last(&self, bucket: &store::Bucket) -> Result<u64, store::Error> {
        Ok(bucket
            .get(&self.last)?
            .and_then(|last| String::from_utf8(last).ok()?.parse().ok())
            .unwrap_or(0))
    }
}

/// How long a name with `count` failed sign-ins in a row is paused.
fn pause(count: u64) -> u64 {
    let doublings = count.saturating_sub(FREE_FAILURES).min(16);
    (FIRST_PAUSE_SECONDS << doublings).min(MAX_PAUSE_SECONDS)
}

/// `seconds` as a visitor reads it.
fn duration(seconds: u64) -> String {
    match seconds {
        0..=1 => "a second".to_owned(),
        2..=90 => format!("{seconds} seconds"),
        _ => format!("{} minutes", seconds.div_ceil(60)),
    }
}

/// `POST signout`: ends the session and removes its cookie.
fn sign_out(base: &str, token: Option<&str>, secure: bool) -> Result<Reply, store::Error> {
    if let Some(token) = token.filter(|token| is_token(token)) {
        bucket()?.delete(&session_key(token))?;
    }
    Ok(Reply::see_other(&format!("{base}/")).with("set-cookie", cookie("", 0, secure)))
}

/// The name signed in with session `token`, if it is live.
fn session_name(token: &str) -> Result<Option<String>, store::Error> {
    if !is_token(token) {
        return Ok(None);
    }
    let bucket = bucket()?;
    let key = session_key(token);
    let Some(session) = bucket.get(&key)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&session);
    let mut lines = text.split('\n');
    let (Some(name), Some(expires), Some(stored)) = (lines.next(), lines.next(), lines.next())
    else {
        return Ok(None);
    };
    let same: bool =
        subtle::ConstantTimeEq::ct_eq(stored.as_bytes(), hex(&digest(token)).as_bytes()).into();
    if !same {
        return Ok(None);
    }
    if expires.parse::<u64>().is_ok_and(|expires| expires > now()) {
        Ok(Some(name.to_owned()))
    } else {
        bucket.delete(&key)?;
        Ok(None)
    }
}

/// The SHA-256 of `text`: a session token, a name.
fn digest(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// Where the session of `token` is kept: under its digest, never the
/// token itself.
fn session_key(token: &str) -> String {
    format!("session:{}", hex(&digest(token)))
}

/// A session token: 64 hex digits.
fn is_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The session cookie: `token` for `seconds` (0 removes it).
fn cookie(token: &str, seconds: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; Max-Age={seconds}; HttpOnly; SameSite=Lax{secure}")
}

/// The session token the request's cookies carry, if any.
fn session_cookie(request: &IncomingRequest) -> Option<String> {
    request
        .headers()
        .get("cookie")
        .iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// An Argon2id hash of `password` (PHC string), with a salt from
/// `wasi:random`.
fn hash_password(password: &str) -> String {
    let salt = random::get_random_bytes(16);
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("Argon2 takes any password and a 16-byte salt")
        .to_string()
}

fn now() -> u64 {
    wall_clock::now().seconds
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The values of `names` in the form, each present and not blank; or the
/// page that names the missing ones.
fn required<const N: usize>(
    fields: &[(String, String)],
    names: [&str; N],
) -> Result<[String; N], Reply> {
    let value = |name: &str| {
        fields
            .iter()
            .find(|(field, value)| field == name && !value.trim().is_empty())
            .map(|(_, value)| value.trim().to_owned())
    };
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| value(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Reply::page(
            400,
            "A field is missing",
            &format!("<p>Missing: {}.</p>", missing.join(", ")),
        ));
    }
    Ok(names.map(|name| value(name).unwrap_or_default()))
}

/// The store refused or is down: the visitor is told to try again.
fn unavailable(err: store::Error) -> Reply {
    eprintln!("account store: {err:?}");
    Reply::page(
        503,
        "Try again in a moment",
        "<p>The account store is not available right now.</p>",
    )
    .with("retry-after", "5".to_owned())
}

/// The form body, or the page that says why it is not one.
fn read_form(request: IncomingRequest) -> Result<Vec<(String, String)>, Reply> {
    let content_type = request
        .headers()
        .get("content-type")
        .first()
        .map(|value| String::from_utf8_lossy(value).to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.split(';').next().map(str::trim) != Some("application/x-www-form-urlencoded") {
        return Err(Reply::page(
            415,
            "Unsupported Media Type",
            "<p>Expected a form body (application/x-www-form-urlencoded).</p>",
        ));
    }
    let body = match read_body(request) {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let detail = format!("<p>A form body may be {MAX_BODY} bytes at most.</p>");
            return Err(Reply::page(413, "Content Too Large", &detail));
        }
        Err(BodyError::Broken) => {
            let detail = "<p>The request body could not be read.</p>";
            return Err(Reply::page(400, "Bad Request", detail));
        }
    };
    form::parse(&body).map_err(|err| {
        let detail = format!(
            "<p>The form body is malformed: {}.</p>",
            escape(&err.to_string())
        );
        Reply::page(400, "Bad Request", &detail)
    })
}

/// Why a request body was not read.
enum BodyError {
    /// Over [`MAX_BODY`].
    TooLarge,
    /// The stream failed.
    Broken,
}

fn read_body(request: IncomingRequest) -> Result<Vec<u8>, BodyError> {
    let declared = request
        .headers()
        .get("content-length")
        .first()
        .and_then(|value| std::str::from_utf8(value).ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY) {
        return Err(BodyError::TooLarge);
    }
    let incoming = request.consume().expect("the body is taken once");
    let stream = incoming.stream().expect("the stream is taken once");
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(4096) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
            }
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(_)) => return Err(BodyError::Broken),
        }
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — wasmhttpd</title>\
         <link rel=\"stylesheet\" href=\"/css/site.css\"></head>\n\
         <body>\n<main class=\"narrow\">\n<h1>{title}</h1>\n{body}\n\
         <p><a href=\"/\">Home</a></p>\n</main>\n</body>\n</html>\n"
    )
}

fn send(outparam: ResponseOutparam, reply: Reply) {
    let mut headers = vec![
        (
            "content-type".to_owned(),
            b"text/html; charset=utf-8".to_vec(),
        ),
        (
            "content-length".to_owned(),
            reply.page.len().to_string().into_bytes(),
        ),
        ("cache-control".to_owned(), b"no-store".to_vec()),
    ];
    for (name, value) in reply.headers {
        headers.push((name, value.into_bytes()));
    }
    let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
    response
        .set_status_code(reply.status)
        .expect("valid status");
    let body = response.body().expect("the body is taken once");
    ResponseOutparam::set(outparam, Ok(response));
    let stream = body.write().expect("the stream is taken once");
    for chunk in reply.page.as_bytes().chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_an_account_is_checked_as_hard_as_one_with() {
        let fixed = argon2::password_hash::phc::PasswordHash::new(NO_ACCOUNT_HASH).unwrap();
        let salt = [7; 16];
        let made = argon2::Argon2::default()
            .hash_password_with_salt(b"any password", &salt)
            .unwrap();
        assert_eq!(fixed.algorithm, made.algorithm);
        assert_eq!(fixed.version, made.version);
        assert_eq!(fixed.params, made.params);
        assert_eq!(
            fixed.hash.map(|hash| hash.len()),
            made.hash.map(|hash| hash.len())
        );
        assert!(!check_password("any password", NO_ACCOUNT_HASH));
    }

    #[test]
    fn pauses_double_from_the_first_up_to_the_longest() {
        assert_eq!(pause(FREE_FAILURES), FIRST_PAUSE_SECONDS);
        assert_eq!(pause(FREE_FAILURES + 1), 2 * FIRST_PAUSE_SECONDS);
        assert_eq!(pause(FREE_FAILURES + 3), 8 * FIRST_PAUSE_SECONDS);
        assert_eq!(pause(FREE_FAILURES + 50), MAX_PAUSE_SECONDS);
        assert_eq!(duration(30), "30 seconds");
        assert_eq!(duration(61), "61 seconds");
        assert_eq!(duration(91), "2 minutes");
    }
}
