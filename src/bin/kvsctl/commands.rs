//! What each subcommand asks the store, and what it reports.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde_json::{json, Value};

use crate::args::{
    AddMemberArgs, Command, CountArgs, FailArgs, GetArgs, IgetArgs, IsetArgs, KeyArg, LsArgs,
    PutArgs, ShardArg, ViewChange,
};
use crate::client::{Answer, Call, Client, NodeAddr};
use crate::digest;
use crate::error::CliError;
use crate::output::{self, Report};
use crate::session::Session;

/// Characters sent as they are in a path segment or a query value: RFC 3986's
/// unreserved ones. Everything else is percent-encoded, `/` included, so a key is one
/// segment (the store decodes the path once).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The most keys the store returns in one page of a listing.
const MAX_PAGE: u64 = 1000;

/// The store's text for metadata it did not issue.
const INVALID_METADATA: &str = "Invalid causal metadata";

/// A kvsctl run: where requests go, and the session they carry.
pub struct Ctx {
    pub client: Client,
    pub session: Session,
    /// Key operations ask for `?consistency=linearizable`.
    pub linearizable: bool,
}

impl Ctx {
    /// The path of a key operation, linearizable if asked.
    fn key_path(&self, key: &str) -> Result<String, CliError> {
        let path = key_path(key)?;
        Ok(if self.linearizable {
            format!("{path}?consistency=linearizable")
        } else {
            path
        })
    }

    /// Sends a key operation (its body carries the session's metadata) and keeps the
    /// metadata of a successful answer.
    async fn key_op(&mut self, call: Call) -> Result<Answer, CliError> {
        let answer = self.client.call(&call).await?;
        if answer.status == 400 && answer.error_text() == INVALID_METADATA {
            return Err(CliError::InvalidSession {
                what: call.what,
                node: answer.node,
                session: self.session.path().map(Path::to_path_buf),
            });
        }
        let answer = answer.success(&call.what)?;
        if let Some(token) = answer.body.get("causal-metadata").and_then(Value::as_str) {
            self.session.observe(token);
        }
        Ok(answer)
    }

    /// The body of a key operation: the session's metadata and `extra`'s fields.
    fn with_metadata(&self, mut extra: Value) -> Value {
        extra["causal-metadata"] = json!(self.session.token());
        extra
    }

    /// A successful answer to a request that is not a key operation.
    async fn plain(&self, call: Call) -> Result<Answer, CliError> {
        self.client.call(&call).await?.success(&call.what)
    }
}

/// Runs one command against the store (`session` subcommands are handled before).
pub async fn run(ctx: &mut Ctx, command: Command) -> Result<Report, CliError> {
    match command {
        Command::Get(args) => get(ctx, args).await,
        Command::Put(args) => put(ctx, args).await,
        Command::Del(args) => del(ctx, args).await,
        Command::Ls(args) => ls(ctx, args).await,
        Command::View { change: None } => view(ctx).await,
        Command::View {
            change: Some(change),
        } => change_view(ctx, change).await,
        Command::Shards => shards(ctx).await,
        Command::Members(args) => members(ctx, args).await,
        Command::Count(args) => count(ctx, args).await,
        Command::AddMember(args) => add_member(ctx, args).await,
        Command::Reshard(args) => reshard(ctx, args.shard_count).await,
        Command::Status => status(ctx).await,
        Command::Fail(args) => fail(ctx, args).await,
        Command::Recover(args) => recover(ctx, &args.node).await,
        Command::Iset(args) => iset(ctx, args).await,
        Command::Iget(args) => iget(ctx, args).await,
        Command::Session { .. } => Err(CliError::Usage(
            "session commands do not reach the store".into(),
        )),
    }
}

// --- keys -------------------------------------------------------------------------

/// The path of a key: one percent-encoded segment.
pub fn key_path(key: &str) -> Result<String, CliError> {
    if key.is_empty() {
        return Err(CliError::Usage("the key is empty".into()));
    }
    // URL parsers resolve `.` and `..` segments (even encoded): such a key cannot be sent.
    if key == "." || key == ".." {
        return Err(CliError::Usage(format!(
            "the key {key:?} cannot be sent in a URL path"
        )));
    }
    Ok(format!(
        "/key-value-store/{}",
        utf8_percent_encode(key, UNRESERVED)
    ))
}

fn with_newline(mut text: String, newline: bool) -> String {
    if newline {
        text.push('\n');
    }
    text
}

async fn read_key(ctx: &mut Ctx, key: &str) -> Result<(String, Answer), CliError> {
    let what = format!("get {key:?}");
    let body = ctx.with_metadata(json!({}));
    let answer = ctx
        .key_op(Call::read(&what, ctx.key_path(key)?).body(body))
        .await?;
    Ok((answer.text(&what, "value")?, answer))
}

async fn get(ctx: &mut Ctx, args: GetArgs) -> Result<Report, CliError> {
    let (value, answer) = read_key(ctx, &args.key).await?;
    let json = json!({
        "key": args.key,
        "value": value,
        "causal-metadata": answer.body.get("causal-metadata"),
    });
    Ok(Report::new(json, with_newline(value, !args.no_newline)))
}

/// Writes `value` under `key`; the report names the key, whether it was added or
/// updated, and its shard.
async fn write_key(ctx: &mut Ctx, key: &str, value: String) -> Result<Report, CliError> {
    let what = format!("put {key:?}");
    let body = ctx.with_metadata(json!({ "value": value }));
    let call = Call::write(&what, Method::PUT, ctx.key_path(key)?).body(body);
    let answer = ctx.key_op(call).await?;
    let result = if answer.status == 201 {
        "added"
    } else {
        "updated"
    };
    let shard = answer.text(&what, "shard-id")?;
    let json = json!({
        "key": key,
        "result": result,
        "shard-id": shard,
        "causal-metadata": answer.body.get("causal-metadata"),
    });
    Ok(Report::new(
        json,
        format!("{result} {key:?} (shard {shard})\n"),
    ))
}

async fn put(ctx: &mut Ctx, args: PutArgs) -> Result<Report, CliError> {
    let source = ValueSource::of(args.value, args.file);
    let stdin = std::io::stdin();
    let is_terminal = stdin.is_terminal();
    let value = source.read(stdin.lock(), is_terminal)?;
    write_key(ctx, &args.key, value).await
}

async fn del(ctx: &mut Ctx, args: KeyArg) -> Result<Report, CliError> {
    let what = format!("del {:?}", args.key);
    let body = ctx.with_metadata(json!({}));
    let call = Call::write(&what, Method::DELETE, ctx.key_path(&args.key)?).body(body);
    let answer = ctx.key_op(call).await?;
    let shard = answer.text(&what, "shard-id")?;
    let json = json!({
        "key": args.key,
        "result": "deleted",
        "shard-id": shard,
        "causal-metadata": answer.body.get("causal-metadata"),
    });
    let text = format!("deleted {:?} (shard {shard})\n", args.key);
    Ok(Report::new(json, text))
}

/// Where a value comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum ValueSource {
    Text(String),
    /// `explicit`: asked for with `-` (read even from a terminal).
    Stdin {
        explicit: bool,
    },
    File(PathBuf),
}

impl ValueSource {
    /// From `put KEY [VALUE] [--file PATH]` (clap keeps VALUE and --file apart).
    pub fn of(value: Option<String>, file: Option<PathBuf>) -> Self {
        match (value, file) {
            (_, Some(path)) => ValueSource::File(path),
            (Some(dash), None) if dash == "-" => ValueSource::Stdin { explicit: true },
            (Some(text), None) => ValueSource::Text(text),
            (None, None) => ValueSource::Stdin { explicit: false },
        }
    }

    /// The value, as UTF-8 text (the store keeps JSON strings).
    pub fn read(self, stdin: impl Read, stdin_is_terminal: bool) -> Result<String, CliError> {
        let bytes = match self {
            ValueSource::Text(text) => return Ok(text),
            ValueSource::Stdin { explicit: false } if stdin_is_terminal => {
                // Waiting for a terminal's end of file would look like a hang.
                return Err(CliError::Usage(
                    "no value: give VALUE, --file PATH, or pipe it on stdin (- reads a terminal)"
                        .into(),
                ));
            }
            ValueSource::Stdin { .. } => {
                read_all(stdin).map_err(|e| CliError::Local(format!("cannot read stdin: {e}")))?
            }
            ValueSource::File(path) => std::fs::read(&path)
                .map_err(|e| CliError::Local(format!("cannot read {}: {e}", path.display())))?,
        };
        String::from_utf8(bytes).map_err(|_| CliError::Local("the value is not UTF-8 text".into()))
    }
}

fn read_all(mut reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    Ok(bytes)
}

// --- listing ----------------------------------------------------------------------

/// The path of one page of the listing.
pub fn listing_path(prefix: Option<&str>, after: Option<&str>, limit: u64) -> String {
    let mut query = vec![format!("limit={limit}")];
    for (name, value) in [("prefix", prefix), ("after", after)] {
        if let Some(v) = value {
            query.push(format!("{name}={}", utf8_percent_encode(v, UNRESERVED)));
        }
    }
    format!("/key-value-store?{}", query.join("&"))
}

/// One page: its keys and where the next starts (`None`: the last page).
fn page_of(answer: &Answer, what: &str) -> Result<(Vec<String>, Option<String>), CliError> {
    let keys = answer
        .body
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|keys| {
            keys.iter()
                .map(|k| k.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| answer.unexpected(what, "keys"))?;
    let next = match answer.body.get("next") {
        None | Some(Value::Null) => None,
        Some(Value::String(next)) => Some(next.clone()),
        Some(_) => return Err(answer.unexpected(what, "next")),
    };
    Ok((keys, next))
}

/// One page of at most `want` keys after `after`, and where the next page starts.
async fn list_page(
    ctx: &mut Ctx,
    prefix: Option<&str>,
    after: Option<&str>,
    want: u64,
) -> Result<(Vec<String>, Option<String>), CliError> {
    let what = "ls";
    let body = ctx.with_metadata(json!({}));
    let call = Call::read(what, listing_path(prefix, after, want)).body(body);
    let answer = ctx.key_op(call).await?;
    let (page, next) = page_of(&answer, what)?;
    // A next that does not move on would page forever.
    if next.is_some() && next.as_deref() <= after {
        return Err(answer.unexpected(what, "next key after the last one"));
    }
    Ok((page, next))
}

async fn ls(ctx: &mut Ctx, args: LsArgs) -> Result<Report, CliError> {
    let limit = (!args.all).then_some(args.limit);
    let mut keys: Vec<String> = Vec::new();
    let mut after = args.after;
    // Pages can be shorter than asked (docs/tools.md): go on until enough or the end.
    loop {
        let want = limit.map_or(MAX_PAGE, |l| (l - keys.len() as u64).min(MAX_PAGE));
        let (page, next) = list_page(ctx, args.prefix.as_deref(), after.as_deref(), want).await?;
        keys.extend(page);
        after = next;
        if after.is_none() || limit.is_some_and(|l| keys.len() as u64 >= l) {
            break;
        }
    }
    let next = cut_to_limit(&mut keys, limit, after);
    Ok(ls_report(keys, next))
}

/// Keeps at most `limit` keys; returns where a listing would go on (`None`: the end).
fn cut_to_limit(
    keys: &mut Vec<String>,
    limit: Option<u64>,
    next: Option<String>,
) -> Option<String> {
    match limit {
        Some(l) if keys.len() as u64 > l => {
            keys.truncate(l as usize);
            keys.last().cloned()
        }
        _ => next,
    }
}

fn ls_report(keys: Vec<String>, next: Option<String>) -> Report {
    let text = output::lines(&keys);
    let note = next
        .as_ref()
        .map(|n| format!("more keys: kvsctl ls --after {} (or --all)", shell_quote(n)));
    let mut report = Report::new(json!({ "keys": keys, "next": next }), text);
    report.note = note;
    report
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:/@%+=,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

// --- the store's shape ------------------------------------------------------------

async fn view(ctx: &mut Ctx) -> Result<Report, CliError> {
    let what = "view";
    let answer = ctx.plain(Call::read(what, "/key-value-store-view")).await?;
    let view = answer.list(what, "view")?;
    Ok(Report::new(json!({ "view": view }), output::lines(&view)))
}

async fn change_view(ctx: &mut Ctx, change: ViewChange) -> Result<Report, CliError> {
    let (method, address, verb) = match change {
        ViewChange::Add(a) => (Method::PUT, a.address, "add"),
        ViewChange::Remove(a) => (Method::DELETE, a.address, "remove"),
    };
    let what = format!("view {verb} {address}");
    let call = Call::write(&what, method, "/key-value-store-view")
        .body(json!({ "socket-address": address }))
        .admin();
    message_report(ctx.plain(call).await?, &what)
}

/// The report of an answer whose point is its `message`.
fn message_report(answer: Answer, what: &str) -> Result<Report, CliError> {
    let message = answer.text(what, "message")?;
    Ok(Report::new(answer.body, format!("{message}\n")))
}

async fn shard_ids(ctx: &mut Ctx) -> Result<Vec<String>, CliError> {
    let what = "shards";
    let path = "/key-value-store-shard/shard-ids";
    ctx.plain(Call::read(what, path))
        .await?
        .list(what, "shard-ids")
}

async fn shards(ctx: &mut Ctx) -> Result<Report, CliError> {
    let ids = shard_ids(ctx).await?;
    Ok(Report::new(
        json!({ "shard-ids": ids }),
        output::lines(&ids),
    ))
}

fn shard_path(what: &str, shard: &str) -> String {
    format!(
        "/key-value-store-shard/{what}/{}",
        utf8_percent_encode(shard, UNRESERVED)
    )
}

async fn members(ctx: &mut Ctx, args: ShardArg) -> Result<Report, CliError> {
    let what = format!("members {}", args.shard);
    let path = shard_path("shard-id-members", &args.shard);
    let members = ctx
        .plain(Call::read(&what, path))
        .await?
        .list(&what, "shard-id-members")?;
    let json = json!({ "shard-id": args.shard, "members": members });
    Ok(Report::new(json, output::lines(&members)))
}

async fn key_count(ctx: &mut Ctx, shard: &str) -> Result<u64, CliError> {
    let what = format!("count {shard}");
    let field = "shard-id-key-count";
    let answer = ctx
        .plain(Call::read(&what, shard_path(field, shard)))
        .await?;
    answer
        .body
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| answer.unexpected(&what, field))
}

async fn count(ctx: &mut Ctx, args: CountArgs) -> Result<Report, CliError> {
    let shards = match &args.shard {
        Some(shard) => vec![shard.clone()],
        None => shard_ids(ctx).await?,
    };
    let mut counts = Vec::with_capacity(shards.len());
    for shard in shards {
        let n = key_count(ctx, &shard).await?;
        counts.push((shard, n));
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let text = match (&args.shard, counts.as_slice()) {
        (Some(_), [(_, n)]) => format!("{n}\n"),
        _ => output::count_table(&counts),
    };
    let by_shard: serde_json::Map<String, Value> =
        counts.into_iter().map(|(s, n)| (s, json!(n))).collect();
    Ok(Report::new(
        json!({ "counts": by_shard, "total": total }),
        text,
    ))
}

async fn add_member(ctx: &mut Ctx, args: AddMemberArgs) -> Result<Report, CliError> {
    let what = format!("add-member {} {}", args.shard, args.address);
    let call = Call::write(&what, Method::PUT, shard_path("add-member", &args.shard))
        .body(json!({ "socket-address": args.address }))
        .admin();
    message_report(ctx.plain(call).await?, &what)
}

async fn reshard(ctx: &mut Ctx, shard_count: u32) -> Result<Report, CliError> {
    let what = format!("reshard {shard_count}");
    let call = Call::write(&what, Method::PUT, "/key-value-store-shard/reshard")
        .body(json!({ "shard-count": shard_count }))
        .admin();
    message_report(ctx.plain(call).await?, &what)
}

async fn status(ctx: &mut Ctx) -> Result<Report, CliError> {
    let answer = ctx.plain(Call::read("status", "/kvs/status")).await?;
    if !answer.body.get("nodes").is_some_and(Value::is_array) {
        return Err(answer.unexpected("status", "nodes"));
    }
    let text = output::status_table(&answer.body);
    Ok(Report::new(answer.body, text))
}

// --- fault injection --------------------------------------------------------------

async fn fail(ctx: &mut Ctx, args: FailArgs) -> Result<Report, CliError> {
    let what = format!("fail {}", args.node);
    let body = match args.seconds {
        Some(s) => json!({ "seconds": s }),
        None => json!({}),
    };
    let call = Call::write(&what, Method::POST, "/kvs/fault/fail")
        .body(body)
        .admin();
    let answer = ctx
        .client
        .call_at(&args.node, &call)
        .await?
        .success(&what)?;
    let seconds = answer
        .body
        .get("seconds")
        .map_or_else(|| "?".to_owned(), Value::to_string);
    let text = format!("{} failed for {seconds} s\n", args.node);
    Ok(Report::new(answer.body, text))
}

async fn recover(ctx: &mut Ctx, node: &NodeAddr) -> Result<Report, CliError> {
    let what = format!("recover {node}");
    let call = Call::write(&what, Method::POST, "/kvs/fault/recover")
        .body(json!({}))
        .admin();
    let answer = ctx.client.call_at(node, &call).await?.success(&what)?;
    Ok(Report::new(answer.body, format!("{node} recovered\n")))
}

// --- images -----------------------------------------------------------------------

/// The key of the image at `path`.
fn image_key(path: &Path) -> Result<String, CliError> {
    std::fs::File::open(path)
        .and_then(digest::image_key)
        .map_err(|e| CliError::Local(format!("cannot read {}: {e}", path.display())))
}

async fn iset(ctx: &mut Ctx, args: IsetArgs) -> Result<Report, CliError> {
    let key = image_key(&args.file)?;
    let source = ValueSource::of(Some(args.metadata), None);
    let stdin = std::io::stdin();
    let is_terminal = stdin.is_terminal();
    let metadata = source.read(stdin.lock(), is_terminal)?;
    let mut report = write_key(ctx, &key, metadata).await?;
    report.json["file"] = json!(args.file);
    report.text = format!("{key}\n");
    Ok(report)
}

async fn iget(ctx: &mut Ctx, args: IgetArgs) -> Result<Report, CliError> {
    let key = image_key(&args.file)?;
    let (metadata, _) = read_key(ctx, &key).await?;
    let json = json!({ "key": key, "file": args.file, "metadata": metadata });
    Ok(Report::new(json, with_newline(metadata, !args.no_newline)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_percent_encoded_segment() {
        assert_eq!(key_path("abc-_.~").expect("ok"), "/key-value-store/abc-_.~");
        assert_eq!(
            key_path("a/b c?d#é").expect("ok"),
            "/key-value-store/a%2Fb%20c%3Fd%23%C3%A9"
        );
        assert_eq!(key_path("..a").expect("ok"), "/key-value-store/..a");
        for bad in ["", ".", ".."] {
            assert_eq!(key_path(bad).expect_err(bad).exit_code(), 2);
        }
    }

    #[test]
    fn listing_queries_are_encoded() {
        assert_eq!(listing_path(None, None, 100), "/key-value-store?limit=100");
        assert_eq!(
            listing_path(Some("a b&"), Some("k/1"), 5),
            "/key-value-store?limit=5&prefix=a%20b%26&after=k%2F1"
        );
    }

    #[test]
    fn a_value_comes_from_the_argument_stdin_or_a_file() {
        let src = |v: Option<&str>, f: Option<&str>| {
            ValueSource::of(v.map(str::to_owned), f.map(PathBuf::from))
        };
        assert_eq!(src(Some("v"), None), ValueSource::Text("v".into()));
        assert_eq!(src(Some("-"), None), ValueSource::Stdin { explicit: true });
        assert_eq!(src(None, None), ValueSource::Stdin { explicit: false });
        assert_eq!(src(None, Some("f")), ValueSource::File("f".into()));

        let stdin = &b"from stdin\n"[..];
        assert_eq!(src(Some("v"), None).read(stdin, false).expect("v"), "v");
        assert_eq!(
            src(None, None).read(stdin, false).expect("piped"),
            "from stdin\n"
        );
        assert_eq!(
            src(Some("-"), None).read(stdin, true).expect("asked"),
            "from stdin\n"
        );
        let e = src(None, None).read(stdin, true).expect_err("a terminal");
        assert_eq!(e.exit_code(), 2);
        let e = src(None, None)
            .read(&[0xff, 0xfe][..], false)
            .expect_err("not UTF-8");
        assert_eq!(e.exit_code(), 5);
        let e = src(None, Some("/nonexistent/kvsctl")).read(stdin, false);
        assert_eq!(e.expect_err("no file").exit_code(), 5);
    }

    #[test]
    fn a_listing_with_keys_left_says_how_to_go_on() {
        let report = ls_report(vec!["a".into(), "b c".into()], Some("b c".into()));
        assert_eq!(report.text, "a\nb c\n");
        assert_eq!(report.json, json!({"keys": ["a", "b c"], "next": "b c"}));
        assert_eq!(
            report.note.as_deref(),
            Some("more keys: kvsctl ls --after 'b c' (or --all)")
        );
        let last = ls_report(vec![], None);
        assert_eq!((last.text.as_str(), last.note), ("", None));
    }

    #[test]
    fn a_listing_is_cut_to_its_limit_and_goes_on_after_the_last_key_kept() {
        let mut keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            cut_to_limit(&mut keys, Some(2), Some("c".into())),
            Some("b".into())
        );
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(cut_to_limit(&mut keys, Some(2), None), None);
        assert_eq!(
            cut_to_limit(&mut keys, None, Some("b".into())),
            Some("b".into())
        );
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn shell_quoting_leaves_plain_words_alone() {
        assert_eq!(shell_quote("user:42"), "user:42");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
