\set n random(1, :tokens)
\set price random(28, 400)
UPDATE tokens_unified
SET latest_price_sol = :price::numeric / 1e9, latest_price_usd = :price::numeric * 150 / 1e9,
    latest_update_slot = 390000000 + :n::bigint
WHERE mint_address = bench_mint(:n);
