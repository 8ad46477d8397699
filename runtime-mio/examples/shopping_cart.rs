//! Seed 003's shopping cart, surviving the crash of the member that served it.
//!
//!     cargo run -p hybridcast-mio --example shopping_cart
//!
//! The cart holds product ids as logical references (the rows stay in the product table) and
//! the quantities the user typed as raw values (no table has them). After the serving member
//! crashes, the user's next request reaches a member that holds no copy at all: it fetches the
//! copy point-to-point from the secondary, takes the session over, and rebuilds the cart.

#[path = "shop/mod.rs"]
mod shop;

use hybridcast_mio::Resumed;
use hybridcast_mio::core::session::{LogicalRef, pool};
use hybridcast_mio::core::{MemberKey, Value};
use shop::{FromTable, Rebuilt, catalog};
use std::collections::BTreeMap;
use std::process::ExitCode;

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
    let mut members = shop::cluster("cart-example", 3, shop::port(48_200))?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let primary = &members[0];
    let token = primary
        .session_create()
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let id = token.id;
    let items = pool::application("cart/items");
    let quantities = pool::application("cart/quantities");
    // One interaction per product added: 10 of A, 20 of B, 30 of C (seed 003's example).
    let mut token = token;
    for (product, qty) in [("p-004", 10u32), ("p-017", 20), ("p-031", 30)] {
        let reference = Value::Ref(LogicalRef::new("product", product));
        primary
            .session_put(id, &items, product, reference)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        primary
            .session_put(
                id,
                &quantities,
                product,
                Value::raw(qty.to_be_bytes().to_vec()),
            )
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        token = primary
            .session_commit(id)
            .map_err(|e| err(&e))?
            .map_err(|e| err(&e))?;
        println!("app-0: the user adds {qty} x {product}");
    }
    shop::wait_replicated(primary, id, 3)?;
    println!("session token: {token}");

    println!("app-0 crashes");
    members.remove(0).crash();
    let names = |m: &hybridcast_mio::NodeHandle| m.view().map(|v| v.name).unwrap_or_default();
    let third = members
        .iter()
        .position(|m| Some(MemberKey::of(&names(m))) != token.secondary)
        .ok_or("no member without a copy")?;
    println!(
        "the next request reaches {}, which holds no copy",
        names(&members[third])
    );
    let outcome = members[third]
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
    let mut cart: BTreeMap<String, (Option<String>, Option<u32>)> = BTreeMap::new();
    for r in rebuilt {
        let entry = cart.entry(r.key).or_default();
        match r.object {
            Rebuilt::Product(p) => entry.0 = Some(p.name),
            Rebuilt::Quantity(q) => entry.1 = Some(q),
            Rebuilt::Page { .. } => {}
        }
    }
    println!(
        "{} fetched the copy from the secondary, took the session over and rebuilt the cart:",
        names(&members[third])
    );
    for (id, (name, qty)) in &cart {
        println!(
            "  {id} {:<18} x {}",
            name.as_deref().unwrap_or("?"),
            qty.unwrap_or(0)
        );
    }
    println!("new token: {new}");
    let expected = [("p-004", 10), ("p-017", 20), ("p-031", 30)];
    let ok = cart.len() == expected.len()
        && expected.iter().all(|(id, q)| {
            cart.get(*id)
                .is_some_and(|(name, qty)| name.is_some() && *qty == Some(*q))
        });
    if !ok {
        return Err("the rebuilt cart differs from the cart the user filled".into());
    }
    println!("OK: the cart survived with all three products and quantities");
    Ok(())
}
