-- POST creates (durable ledger writes through the gateway).
wrk.method = "POST"
wrk.body = '{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"bench"}]}'
wrk.headers["Content-Type"] = "application/json"
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
