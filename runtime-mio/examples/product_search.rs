//! Seed 003's paged product search, surviving the crash of the member that served it.
//!
//!     cargo run -p hybridcast-mio --example product_search
//!
//! The user searches for "router" (40 results, 10 per page) and moves to page 2. The session
//! holds only the canonical state — the query, the page size and the page number, one
//! `LogicalRef::page` — never the 40 rows. The serving member then crashes; the user's next
//! request, carrying the session token, reaches the member holding the replica, which takes the
//! session over and rebuilds page 2 by running the query again against the product table.

#[path = "shop/mod.rs"]
mod shop;

use hybridcast_mio::Resumed;
use hybridcast_mio::core::session::{LogicalRef, pool};
use hybridcast_mio::core::{MemberKey, SessionToken, Value};
use shop::{FromTable, Rebuilt, catalog, page, search};
use std::process::ExitCode;

const QUERY: &str = "router";
const PAGE_SIZE: u32 = 10;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let table = catalog();
    let mut members = shop::cluster("search-example", 3, shop::port(47_600))?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let primary = &members[0];

    // Interaction 1: the search, showing page 1.
    let token = primary
        .session_create()
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let id = token.id;
    let iterator = pool::composite("search");
    let show = |n: u32| {
        primary
            .session_put(
                id,
                &iterator,
                "iterator",
                Value::Ref(LogicalRef::page(QUERY, PAGE_SIZE, n)),
            )
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        primary
            .session_commit(id)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))
    };
    show(1)?;
    println!(
        "app-0 serves the search for {QUERY:?}: {} results, page 1 of {}",
        search(&table, QUERY).len(),
        search(&table, QUERY).len() as u32 / PAGE_SIZE
    );
    // Interaction 2: "Next page".
    let token: SessionToken = show(2)?;
    let shown: Vec<_> = page(&table, QUERY, PAGE_SIZE, 2)
        .into_iter()
        .cloned()
        .collect();
    println!(
        "the user moves to page 2: {} .. {}",
        shown[0].name,
        shown[shown.len() - 1].name
    );
    shop::wait_replicated(primary, id, 2)?;
    let (stats, _) = primary.stats().map_err(|e| err(&e))?;
    let rows_bytes: usize = search(&table, QUERY)
        .iter()
        .map(|p| p.id.len() + p.name.len() + 4)
        .sum();
    println!(
        "replicated to the secondary: {} requests, {} bytes in all (the 40 rows alone are {rows_bytes} bytes)",
        stats.replications_sent, stats.replication_bytes
    );
    println!("session token (the user's cookie): {token}");

    println!("app-0 crashes");
    members.remove(0).crash();
    let secondary = token.secondary.ok_or("no secondary was chosen")?;
    let at = members
        .iter()
        .position(|m| m.view().is_ok_and(|v| MemberKey::of(&v.name) == secondary))
        .ok_or("the secondary is not running")?;
    let outcome = members[at]
        .session_resume(token)
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let Resumed::FailedOver {
        token: new, state, ..
    } = outcome
    else {
        return Err(format!("expected a failover, got {outcome:?}"));
    };
    let mut hook = FromTable {
        table: &table,
        rows_read: 0,
    };
    let rebuilt = state.reconstruct(&mut hook).map_err(|e| e.to_string())?;
    let Some(Rebuilt::Page { number, rows, .. }) = rebuilt.into_iter().map(|r| r.object).next()
    else {
        return Err("the session held no page".into());
    };
    println!(
        "the next request reaches {} with the token: it took the session over and re-ran the query ({} rows read): page {number}, {} .. {}",
        members[at].view().map_err(|e| err(&e))?.name,
        hook.rows_read,
        rows[0].name,
        rows[rows.len() - 1].name
    );
    println!("new token: {new}");
    if number != 2 || rows != shown {
        return Err("the rebuilt page differs from the page the user saw".into());
    }
    println!("OK: the user is still on page 2, with the same 10 products");
    Ok(())
}
