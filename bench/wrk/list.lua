-- GET /api/{user}/tasks?limit=20 (the user has exactly 20 tasks)
wrk.method = "GET"
