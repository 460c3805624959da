-- One small non-streamed chat completion per request (usage in the JSON body).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words"}]}'
