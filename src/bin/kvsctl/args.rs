//! kvsctl's command line (clap derive): global options, then one subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::NodeAddr;

/// The host ports `./build.sh` publishes its six nodes on (127.0.0.1:8082..8087).
pub const DEFAULT_NODES: &str =
    "127.0.0.1:8082,127.0.0.1:8083,127.0.0.1:8084,127.0.0.1:8085,127.0.0.1:8086,127.0.0.1:8087";

/// The heading of the options every subcommand takes, apart from its own.
const GLOBAL: &str = "Global options";

const ABOUT: &str = "Command-line client of kvs, the sharded, causally consistent key-value store";

const LONG_ABOUT: &str = "\
Command-line client of kvs, the sharded, causally consistent key-value store.

kvsctl reads and writes keys, lists them, and shows and changes the store's shards and
nodes. Every key command sends the session's causal metadata and keeps the metadata of the
answer in a session file, so that consecutive commands are causally consistent even when
they reach different nodes: a read never misses a write an earlier command made or saw.

Requests go to the first node of --node that can be reached. A read that gets no answer
goes to the next node; a write goes to the next node only if it could not be sent at all.
A write whose answer is lost is not sent again (it may have been applied): kvsctl says so
and exits 4.";

const EXAMPLES: &str = "\
Examples:
  kvsctl put greeting hello                # to the first reachable default node
  kvsctl --node 127.0.0.1:8085 get greeting
  printf 'a\\nb' | kvsctl put lines          # the value from stdin
  kvsctl put photo-note --file note.txt
  kvsctl ls --prefix user: --all
  kvsctl --json status | jq '.nodes[] | select(.up | not) | .address'
  kvsctl iset cat.jpg 'a cat, 2024, by Ana' && kvsctl iget cat.jpg
  KVS_ADMIN_TOKEN=secret kvsctl reshard 3

Environment:
  KVSCTL_NODES     the nodes, comma-separated (instead of --node)
  KVSCTL_SESSION   the session file (instead of --session)
  KVS_ADMIN_TOKEN  the admin token (instead of --token)

Exit codes:
  0  success
  1  the store answered with an error (key not found, bad request, admin token
     required, 503, causal metadata of another store...)
  2  usage error: a wrong command line
  3  no node could be reached: nothing was applied, retrying is safe
  4  a write was sent but its answer was lost (or the store said so): it may have
     been applied; read before retrying
  5  a local error: session file, input file or stdin";

#[derive(Debug, Parser)]
#[command(
    name = "kvsctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = EXAMPLES,
    propagate_version = true,
    // An option given twice takes the later value (a wrapper's default, then the user's).
    args_override_self = true
)]
pub struct Cli {
    /// A node to send requests to, host:port or http://host:port. Repeat it (or give a
    /// comma-separated list) to fail over: requests go to the first node that can be
    /// reached. The default is the six nodes ./build.sh publishes on this host.
    #[arg(
        long = "node",
        value_name = "ADDR",
        env = "KVSCTL_NODES",
        value_delimiter = ',',
        default_value = DEFAULT_NODES,
        hide_default_value = true,
        value_parser = NodeAddr::parse,
        global = true,
        help_heading = GLOBAL
    )]
    pub nodes: Vec<NodeAddr>,

    /// The session file, where the causal metadata of the last answer is kept. Default:
    /// $XDG_STATE_HOME/kvsctl/session.json, else ~/.local/state/kvsctl/session.json.
    #[arg(long, value_name = "PATH", env = "KVSCTL_SESSION", global = true, help_heading = GLOBAL)]
    pub session: Option<PathBuf>,

    /// Neither read nor write the session file: the command depends on nothing earlier
    /// and leaves nothing for the next one.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub no_session: bool,

    /// The store's admin token, sent as "Authorization: Bearer" with admin requests (view
    /// changes, add-member, reshard, fail, recover).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KVS_ADMIN_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = GLOBAL
    )]
    pub token: Option<String>,

    /// Print one JSON document (on one line) instead of text. Errors stay one line of text
    /// on stderr, with nothing on stdout.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// Make get, put, del, iset and iget linearizable (`?consistency=linearizable`): a
    /// majority of the key's shard answers each, so every read sees the latest
    /// acknowledged write through any node; 503 when no majority is reachable.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub linearizable: bool,

    /// How long one request to one node may take, connection included, in milliseconds.
    /// A store node answers within 20 s; raise it for a reshard of a large store.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true,
        help_heading = GLOBAL
    )]
    pub timeout_ms: u64,

    /// How long to wait for a connection to a node before trying the next, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true,
        help_heading = GLOBAL
    )]
    pub connect_timeout_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the value of a key.
    #[command(long_about = "\
Print the value of a key, followed by a newline (none with --no-newline).

The read waits, on the node that answers it, for every write the session depends on.
A key that does not exist is an error (exit 1).

Examples:
  kvsctl get greeting
  kvsctl get --no-newline blob > blob.txt
  kvsctl --json get greeting      # {\"key\":...,\"value\":...,\"causal-metadata\":...}")]
    Get(GetArgs),

    /// Set the value of a key.
    #[command(long_about = "\
Set the value of a key: from VALUE, from stdin (VALUE absent or -), or from a file
(--file). The value is stored as given, final newline included: use printf rather than
echo to leave it out. It must be UTF-8 text.

Prints whether the key was added or updated, and its shard.

Examples:
  kvsctl put greeting hello
  printf hello | kvsctl put greeting
  kvsctl put config --file config.json")]
    Put(PutArgs),

    /// Delete a key.
    #[command(
        visible_alias = "delete",
        long_about = "\
Delete a key. A key that does not exist is an error (exit 1).

Examples:
  kvsctl del greeting"
    )]
    Del(KeyArg),

    /// List keys, in byte order, across every shard.
    #[command(long_about = "\
List keys (not values), one a line, in byte order of their text, gathered from every
shard. kvsctl pages through the store's listing until it has --limit keys (default 100)
or, with --all, every key. When keys are left, it says on stderr how to go on (--after);
with --json, `next` is the key to go on after (null when there are no more).

Examples:
  kvsctl ls
  kvsctl ls --prefix img- --all
  kvsctl ls --limit 10 --after user:0042")]
    Ls(LsArgs),

    /// Print the store's view (the nodes up), or add or remove a node.
    #[command(long_about = "\
Print the store's view: the nodes currently up, one a line. With `add` or `remove`,
change it (admin requests; nodes also join and leave the view by themselves).

Examples:
  kvsctl view
  kvsctl view remove 10.10.0.7:8080")]
    View {
        #[command(subcommand)]
        change: Option<ViewChange>,
    },

    /// Print the shard ids.
    #[command(long_about = "\
Print the ids of the store's shards, one a line.

Examples:
  kvsctl shards")]
    Shards,

    /// Print the members of a shard.
    #[command(long_about = "\
Print the nodes of a shard, one a line.

Examples:
  kvsctl members 0")]
    Members(ShardArg),

    /// Print the number of keys of one shard, or of every shard.
    #[command(long_about = "\
Print the number of live keys of SHARD; without SHARD, a table of every shard's count
and their total.

Examples:
  kvsctl count 1
  kvsctl count")]
    Count(CountArgs),

    /// Add a node to a shard (admin).
    #[command(long_about = "\
Add the node at ADDRESS (as the store knows it, e.g. 10.10.0.8:8080) to SHARD. Returns once
the node holds every key of the shard. An admin request: needs --token when the store has
an admin token.

Examples:
  kvsctl add-member 0 10.10.0.8:8080")]
    AddMember(AddMemberArgs),

    /// Reshard the store into N shards (admin).
    #[command(long_about = "\
Reshard the store into N shards (each needs two nodes up). Returns once every key lives on
its new shard; a large store may need a larger --timeout-ms. An admin request: needs
--token when the store has an admin token.

Examples:
  kvsctl reshard 3
  kvsctl --timeout-ms 600000 reshard 4")]
    Reshard(ReshardArgs),

    /// Print every node's state: up or down, shard, keys, replication lag.
    #[command(long_about = "\
Print what the first reachable node knows of every node of the store (from gossip, at
most a few seconds old): whether it is up, down or in an injected failure, its shard,
the keys it holds, its replication lag (the most writes it coordinated that one of its
shard peers has not acknowledged yet) and whether it is ready. --json prints the node's
whole answer.

Examples:
  kvsctl status
  kvsctl --json status")]
    Status,

    /// Make a node behave as if cut off from the network (admin; fault injection).
    #[command(long_about = "\
Make the node at NODE behave as if cut off from the network, for --seconds (the node's
default is 30) or until `kvsctl recover NODE`. The node must run with
KVS_FAULT_INJECTION=1. NODE is the address kvsctl reaches it at (not one of --node).
An admin request.

Examples:
  kvsctl fail 127.0.0.1:8084 --seconds 60
  kvsctl recover 127.0.0.1:8084")]
    Fail(FailArgs),

    /// End a node's injected failure (admin; fault injection).
    #[command(long_about = "\
End the injected failure of the node at NODE at once (fine also when it is not failed).
An admin request.

Examples:
  kvsctl recover 127.0.0.1:8084")]
    Recover(NodeArg),

    /// Store an image's metadata under a key derived from the image's content.
    #[command(long_about = "\
Store METADATA (text; - reads it from stdin) under the key of the image FILE: `img-` and
the BLAKE3 digest of the file's content, cut to the store's 50 characters. The same
picture gets the same key whatever its name. Prints the key.

Examples:
  kvsctl iset cat.jpg 'a cat on a mat; 2024; by Ana'
  kvsctl iget cat.jpg")]
    Iset(IsetArgs),

    /// Print the metadata stored for an image.
    #[command(long_about = "\
Print the metadata `kvsctl iset` stored for the image FILE (found by the file's content).

Examples:
  kvsctl iget cat.jpg")]
    Iget(IgetArgs),

    /// Show or reset the session (the causal metadata kept between commands).
    #[command(long_about = "\
Show or reset the session file. Reset it to start afresh, e.g. after the store was
created again (its nodes refuse metadata another store issued).

Examples:
  kvsctl session show
  kvsctl session reset")]
    Session {
        #[command(subcommand)]
        action: SessionAction,
    },
}

#[derive(Debug, Args)]
pub struct KeyArg {
    /// The key (at most 50 characters).
    pub key: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Print the value without a newline after it.
    #[arg(long, short = 'n')]
    pub no_newline: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key (at most 50 characters).
    pub key: String,
    /// The value; absent or -: read from stdin.
    #[arg(conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only keys that start with this.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Only keys after this one (the last key of an earlier listing).
    #[arg(long, value_name = "KEY")]
    pub after: Option<String>,
    /// At most this many keys.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub limit: u64,
    /// Every key (no --limit).
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum ViewChange {
    /// Add a node to the view (admin).
    Add(AddressArg),
    /// Remove a node from the view (admin).
    Remove(AddressArg),
}

#[derive(Debug, Args)]
pub struct AddressArg {
    /// The node's socket address as the store knows it, e.g. 10.10.0.8:8080.
    pub address: String,
}

#[derive(Debug, Args)]
pub struct ShardArg {
    /// A shard id (see `kvsctl shards`).
    pub shard: String,
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// A shard id; every shard when absent.
    pub shard: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddMemberArgs {
    /// The shard to add the node to.
    pub shard: String,
    /// The node's socket address as the store knows it, e.g. 10.10.0.8:8080.
    pub address: String,
}

#[derive(Debug, Args)]
pub struct ReshardArgs {
    /// The number of shards.
    #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub shard_count: u32,
}

#[derive(Debug, Args)]
pub struct FailArgs {
    /// The node, host:port as kvsctl reaches it.
    #[arg(value_parser = NodeAddr::parse)]
    pub node: NodeAddr,
    /// How long the failure lasts, in seconds (1 to 3600; the node's default is 30).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: Option<u32>,
}

#[derive(Debug, Args)]
pub struct NodeArg {
    /// The node, host:port as kvsctl reaches it.
    #[arg(value_parser = NodeAddr::parse)]
    pub node: NodeAddr,
}

#[derive(Debug, Args)]
pub struct IsetArgs {
    /// The image file.
    pub file: PathBuf,
    /// The metadata text; - reads it from stdin.
    pub metadata: String,
}

#[derive(Debug, Args)]
pub struct IgetArgs {
    /// The image file.
    pub file: PathBuf,
    /// Print the metadata without a newline after it.
    #[arg(long, short = 'n')]
    pub no_newline: bool,
}

#[derive(Debug, Subcommand)]
pub enum SessionAction {
    /// Print the session file's path and its causal metadata.
    Show,
    /// Remove the session file: the next command depends on nothing earlier.
    Reset,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvsctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn nodes_default_to_build_sh_and_may_be_repeated_or_joined() {
        // KVSCTL_NODES may be set where the tests run: only explicit values are checked
        // beyond the default's length.
        let cli = parse(&["--node", "a:1", "--node", "b:2,c:3", "shards"]).expect("parses");
        let nodes: Vec<String> = cli.nodes.iter().map(|n| n.to_string()).collect();
        assert_eq!(nodes, ["a:1", "b:2", "c:3"]);
        assert_eq!(DEFAULT_NODES.split(',').count(), 6);
        assert!(parse(&["--node", "nohost", "shards"]).is_err());
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = parse(&["get", "k", "--json", "--timeout-ms", "5"]).expect("parses");
        assert!(cli.json);
        assert_eq!(cli.timeout_ms, 5);
        assert!(parse(&["--timeout-ms", "0", "get", "k"]).is_err());
        // Given twice, the later wins (a script's default, then the user's choice).
        let cli = parse(&["--timeout-ms", "10", "get", "k", "--timeout-ms", "20"]);
        assert_eq!(cli.expect("parses").timeout_ms, 20);
        let cli = parse(&["--timeout-ms", "10", "--timeout-ms", "20", "get", "k"]);
        assert_eq!(cli.expect("parses").timeout_ms, 20);
    }

    #[test]
    fn a_value_comes_from_the_argument_or_a_file_not_both() {
        let cli = parse(&["put", "k", "v"]).expect("parses");
        let Command::Put(put) = cli.command else {
            panic!("put expected")
        };
        assert_eq!(put.value.as_deref(), Some("v"));
        assert!(parse(&["put", "k", "v", "--file", "f"]).is_err());
        assert!(parse(&["put", "k", "--file", "f"]).is_ok());
    }

    #[test]
    fn ls_takes_a_limit_or_all() {
        let cli = parse(&["ls", "--prefix", "p"]).expect("parses");
        let Command::Ls(ls) = cli.command else {
            panic!("ls expected")
        };
        assert_eq!((ls.limit, ls.all), (100, false));
        assert!(parse(&["ls", "--all", "--limit", "5"]).is_err());
        assert!(parse(&["ls", "--limit", "0"]).is_err());
    }

    #[test]
    fn numbers_are_checked_by_the_parser() {
        assert!(parse(&["reshard", "0"]).is_err());
        assert!(parse(&["reshard", "2"]).is_ok());
        assert!(parse(&["fail", "a:1", "--seconds", "3601"]).is_err());
        assert!(parse(&["fail", "a:1", "--seconds", "60"]).is_ok());
        assert!(parse(&["fail", "nohost"]).is_err());
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let e = parse(&["get"]).expect_err("no key");
        assert_eq!(e.exit_code(), 2);
    }
}
