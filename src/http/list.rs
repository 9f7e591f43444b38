//! `GET /key-value-store?prefix=P&after=K&limit=N`: a page of live keys, in order, gathered
//! from every shard under one shard map (see `docs/tools.md`).
//!
//! Each shard answers its own first `limit` keys after `after` (a member waits for the
//! writes of its shard the client's token depends on, as a read does), and where its scan
//! stopped. [`merge`] keeps only the keys every shard has answered up to, so a key is never
//! skipped: a page may be shorter than `limit` with more to come. All answers must come
//! from one map epoch; a page gathered while a reshard commits is gathered again under the
//! new map, so every key is listed exactly once over the pages.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::json_object;
use super::reply::{self, Op};
use crate::budget::Deadline;
use crate::causal::CausalMetadata;
use crate::error::KvsError;
use crate::node::Node;
use crate::peer::messages::{ListPage, ListRequest, MAX_LIST_LIMIT};
use crate::peer::PeerError;
use crate::shard::ShardMap;
use crate::NodeId;

/// Keys per page when the client names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// How many times a page is gathered again because a shard answered under a newer map.
const MAX_MAP_ATTEMPTS: usize = 3;
/// How many members of a shard are asked before the shard counts as unavailable.
const MAX_MEMBERS_ASKED: usize = 3;

/// A listing's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
}

impl ListQuery {
    /// Parses the query string; a limit above [`MAX_LIST_LIMIT`] is read as it.
    pub fn parse(query: &str) -> Result<Self, KvsError> {
        let fields = web::Query::<HashMap<String, String>>::from_query(query)
            .map_err(|e| KvsError::BadRequest(format!("Bad query string: {e}")))?
            .into_inner();
        let limit = match fields.get("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n > 0 => n.min(MAX_LIST_LIMIT),
                _ => {
                    return Err(KvsError::BadRequest(
                        "limit must be a positive integer".into(),
                    ))
                }
            },
        };
        Ok(Self {
            prefix: fields.get("prefix").cloned().unwrap_or_default(),
            after: fields.get("after").cloned(),
            limit,
        })
    }
}

/// A listing's answer.
#[derive(Debug, Serialize)]
struct Listed {
    keys: Vec<String>,
    next: Option<String>,
    #[serde(rename = "causal-metadata")]
    causal_metadata: String,
}

/// Serves a listing.
pub async fn handle(query: &str, body: &[u8], node: web::Data<Arc<Node>>) -> HttpResponse {
    let parsed = ListQuery::parse(query).and_then(|q| Ok((q, client_token(body)?)));
    let (query, token) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return reply::error(Op::Get, &e),
    };
    match gather(&node, &query, &token, Deadline::for_client()).await {
        Ok((keys, next)) => reply::json(
            StatusCode::OK,
            serde_json::json!(Listed {
                keys,
                next,
                causal_metadata: token,
            }),
        ),
        Err(e) => reply::error(Op::Get, &e),
    }
}

/// The client's token from the body ("" for none), checked to be this store's.
fn client_token(body: &[u8]) -> Result<String, KvsError> {
    let fields = json_object(body).map_err(KvsError::BadRequest)?;
    match fields.get("causal-metadata") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(token)) if token.is_empty() => Ok(String::new()),
        Some(Value::String(token)) => CausalMetadata::decode(token)
            .map(|_| token.clone())
            .map_err(|_| KvsError::InvalidMetadata),
        Some(_) => Err(KvsError::BadRequest(
            "causal-metadata must be a string".into(),
        )),
    }
}

/// One page of keys from every shard, all under one map: the keys and the `next` cursor.
async fn gather(
    node: &Node,
    query: &ListQuery,
    token: &str,
    deadline: Deadline,
) -> Result<(Vec<String>, Option<String>), KvsError> {
    for _ in 0..MAX_MAP_ATTEMPTS {
        let map = node.routing.map();
        let request = ListRequest {
            epoch: map.epoch,
            deps: token.to_owned(),
            prefix: query.prefix.clone(),
            after: query.after.clone(),
            limit: query.limit,
            budget_ms: deadline.forward_budget_ms().ok_or(KvsError::Unavailable)?,
        };
        let asked = map
            .shards
            .values()
            .map(|members| page_of_shard(node, &map, members, &request, deadline));
        let pages = match futures::future::try_join_all(asked).await {
            Ok(pages) => pages,
            // The map changed under this node while it asked: gather again.
            Err(KvsError::NotAMember | KvsError::NotOwner(_)) => continue,
            Err(e) => return Err(e),
        };
        let newest = pages.iter().map(|p| p.epoch).max().unwrap_or(map.epoch);
        if pages.iter().all(|p| p.epoch == map.epoch) {
            let shards = pages.into_iter().map(|p| (p.keys, p.stop)).collect();
            return Ok(merge(shards, query.limit));
        }
        node.routing.await_epoch(newest, deadline).await;
    }
    Err(KvsError::Unavailable)
}

/// One shard's page: from this node if it is a member, else from the first member that
/// answers.
async fn page_of_shard(
    node: &Node,
    map: &ShardMap,
    members: &std::collections::BTreeSet<NodeId>,
    request: &ListRequest,
    deadline: Deadline,
) -> Result<ListPage, KvsError> {
    if members.contains(&node.me) {
        return node.list_page(request).await;
    }
    for member in node
        .forwarding_order(map, members)
        .into_iter()
        .take(MAX_MEMBERS_ASKED)
    {
        match node
            .peers
            .list_keys(member, request, deadline.remaining())
            .await
        {
            Ok(page) => return Ok(page),
            Err(PeerError::Status { status: 400, .. }) => return Err(KvsError::InvalidMetadata),
            Err(e) => log::debug!("listing: {e}"),
        }
    }
    Err(KvsError::Unavailable)
}

/// Merges the shards' pages (each in order, with where its scan stopped, `None` once it
/// has no more keys) into one page of at most `limit` keys and the cursor to go on after
/// (`None` when every shard is exhausted and every key is in the page). Only keys up to the
/// earliest stop are certain to have no smaller unlisted key in another shard.
pub fn merge(
    shards: Vec<(Vec<String>, Option<String>)>,
    limit: usize,
) -> (Vec<String>, Option<String>) {
    let frontier = shards.iter().filter_map(|(_, stop)| stop.clone()).min();
    let mut keys: Vec<String> = shards
        .into_iter()
        .flat_map(|(keys, _)| keys)
        .filter(|k| frontier.as_ref().is_none_or(|f| k <= f))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > limit {
        keys.truncate(limit);
        let next = keys.last().cloned();
        return (keys, next);
    }
    (keys, frontier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn limits_are_bounded_and_positive() {
        assert_eq!(ListQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(
            ListQuery::parse("limit=5000").unwrap().limit,
            MAX_LIST_LIMIT
        );
        assert!(ListQuery::parse("limit=0").is_err());
        assert!(ListQuery::parse("limit=-1").is_err());
        assert!(ListQuery::parse("limit=x").is_err());
        let q = ListQuery::parse("prefix=a%20b&after=a%2Fc&limit=2").unwrap();
        assert_eq!(q.prefix, "a b");
        assert_eq!(q.after.as_deref(), Some("a/c"));
    }

    #[test]
    fn a_page_holds_only_keys_every_shard_has_answered_up_to() {
        // Shard 0 stopped at "c" (it may have "d"); shard 1 is done.
        let (keys, next) = merge(
            vec![
                (strings(&["a", "c"]), Some("c".into())),
                (strings(&["b", "e"]), None),
            ],
            10,
        );
        assert_eq!(keys, strings(&["a", "b", "c"]));
        assert_eq!(next.as_deref(), Some("c"));
    }

    #[test]
    fn the_last_page_has_no_next() {
        let (keys, next) = merge(vec![(strings(&["a"]), None), (strings(&["b"]), None)], 10);
        assert_eq!(keys, strings(&["a", "b"]));
        assert_eq!(next, None);
    }

    #[test]
    fn a_full_page_goes_on_after_its_last_key_and_keys_appear_once() {
        let (keys, next) = merge(
            vec![(strings(&["a", "b"]), None), (strings(&["b", "c"]), None)],
            2,
        );
        assert_eq!(keys, strings(&["a", "b"]));
        assert_eq!(next.as_deref(), Some("b"));
    }

    /// Paging through shards of random keys, with random limits, lists every key once.
    #[test]
    fn paging_lists_every_key_exactly_once() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            let shards: Vec<Vec<String>> = (0..rng.gen_range(1..4))
                .map(|_| {
                    let mut keys: Vec<String> = (0..rng.gen_range(0..30))
                        .map(|_| format!("k{:03}", rng.gen_range(0..200)))
                        .collect();
                    keys.sort();
                    keys.dedup();
                    keys
                })
                .collect();
            let mut expected: Vec<String> = shards.iter().flatten().cloned().collect();
            expected.sort();
            expected.dedup();
            let (mut listed, mut after) = (Vec::new(), None::<String>);
            for _ in 0..1000 {
                let limit = rng.gen_range(1..6);
                // Each shard answers as `Store::live_keys_after` does.
                let pages = shards
                    .iter()
                    .map(|keys| {
                        let mut page: Vec<String> = keys
                            .iter()
                            .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                            .cloned()
                            .collect();
                        let more = page.len() > limit;
                        page.truncate(limit);
                        let stop = if more { page.last().cloned() } else { None };
                        (page, stop)
                    })
                    .collect();
                let (keys, next) = merge(pages, limit);
                listed.extend(keys);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(listed, expected, "seed {seed}");
        }
    }
}
