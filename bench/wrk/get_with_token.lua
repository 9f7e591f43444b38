-- A GET carrying a causal-metadata token in a JSON body, as each kvs-bench session sends it
-- after its first answer: wrk's figure for the same request as `kvs-bench load --api fixed`.
wrk.method = "GET"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"causal-metadata":"AQADBH8AAAsfkAEEfwAADB-QAQR_AAANH5ABsHv1B14zGV0"}'
