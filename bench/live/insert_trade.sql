\set n random(1, :tokens)
\set sol random(10000000, 5000000000)
\set price random(28, 400)
INSERT INTO trades_unified (signature, mint_address, program, trade_type, user_address, sol_amount, token_amount,
    price_sol, price_usd, market_cap_usd, slot, block_time)
VALUES (md5(random()::text) || md5(random()::text) || left(md5(random()::text), 24), bench_mint(:n), 'bonding_curve',
    'buy', 'bench-app', :sol::numeric, :sol::numeric * 1000 / :price::numeric, :price::numeric / 1e9,
    :price::numeric * 150 / 1e9, :price::numeric * 150, 390000000 + :n::bigint, now())
ON CONFLICT DO NOTHING;
