\set n random(1, :tokens)
SELECT block_time, trade_type, sol_amount, price_sol FROM trades_unified
WHERE mint_address = bench_mint(:n) ORDER BY block_time DESC LIMIT 50;
