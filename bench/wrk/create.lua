-- POST a new task
wrk.method = "POST"
wrk.body = '{"title": "load test", "description": "created by wrk"}'
wrk.headers["Content-Type"] = "application/json"
