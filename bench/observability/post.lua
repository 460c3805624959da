-- wrk: a small non-streamed chat completion, the proxy's most common request.
wrk.method = "POST"
wrk.body = '{"model": "mock-model", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 64}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-fp-bench"
