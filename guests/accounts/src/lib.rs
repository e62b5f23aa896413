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
//! | `POST /account/signin`: `name`, `password` | 303 to `/account/` with a session cookie; 401 for a wrong name or password |
//! | `POST /account/signout` | 303 to `/account/`, the session ended and its cookie removed |
//! | a missing or empty field | 400, a page naming it |
//! | a body that is not a form / malformed / over [`MAX_BODY`] | 415 / 400 / 413 |
//! | another method | 405 with `Allow` |
//! | the store refusing or down | 503 |
//!
//! The session cookie is `HttpOnly` and `SameSite=Lax`, `Secure` when the
//! request came over HTTPS, and lasts [`SESSION_SECONDS`].

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
    let account = bucket.get(&format!("account:{name}"))?;
    let hash = account.as_deref().and_then(|account| {
        let text = std::str::from_utf8(account).ok()?;
        Some(text.split_once('\n')?.1.to_owned())
    });
    let verified = hash.is_some_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    });
    if !verified {
        return Ok(Reply::page(
            401,
            "Wrong name or password",
            &format!(
                "<p>No account has that name and password.</p>\n{}",
                sign_in_form(base, &name)
            ),
        ));
    }
    let token = hex(&random::get_random_bytes(32));
    let expires = now() + SESSION_SECONDS;
    bucket.set(
        &format!("session:{token}"),
        format!("{name}\n{expires}").as_bytes(),
    )?;
    Ok(Reply::see_other(&format!("{base}/"))
        .with("set-cookie", cookie(&token, SESSION_SECONDS, secure)))
}

/// `POST signout`: ends the session and removes its cookie.
fn sign_out(base: &str, token: Option<&str>, secure: bool) -> Result<Reply, store::Error> {
    if let Some(token) = token.filter(|token| is_token(token)) {
        bucket()?.delete(&format!("session:{token}"))?;
    }
    Ok(Reply::see_other(&format!("{base}/")).with("set-cookie", cookie("", 0, secure)))
}

/// The name signed in with session `token`, if it is live.
fn session_name(token: &str) -> Result<Option<String>, store::Error> {
    if !is_token(token) {
        return Ok(None);
    }
    let bucket = bucket()?;
    let key = format!("session:{token}");
    let Some(session) = bucket.get(&key)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&session);
    let Some((name, expires)) = text.split_once('\n') else {
        return Ok(None);
    };
    if expires.parse::<u64>().is_ok_and(|expires| expires > now()) {
        Ok(Some(name.to_owned()))
    } else {
        bucket.delete(&key)?;
        Ok(None)
    }
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
