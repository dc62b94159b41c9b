-- POST a new task with an Idempotency-Key of its own, as the TypeScript client sends every
-- create: unique per thread, per run and per request.
wrk.method = "POST"
wrk.body = '{"title": "load test", "description": "created by wrk"}'
wrk.headers["Content-Type"] = "application/json"

local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_number", threads)
end

local run, sent
function init(args)
    run = os.time()
    sent = 0
end

function request()
    sent = sent + 1
    wrk.headers["Idempotency-Key"] = string.format("wrk-%d-%d-%d", run, thread_number, sent)
    return wrk.format()
end
