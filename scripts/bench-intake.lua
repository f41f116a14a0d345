-- wrk script for scripts/bench-intake.sh: every wrk thread sends its own share of the
-- pre-signed requests in $BENCH_REQUESTS (delivery id, signature, body per line), in order,
-- each once: a thread that has sent its share stops (so no delivery id is ever sent twice),
-- and the summary says if that happened before the end of the run (then raise REQUESTS).
-- With BENCH_WRAP=1 (the baseline, which stores nothing) it starts over instead.
-- Answers are counted by what they say: accepted (202, a new build), retried (202 for a
-- delivery whose build was already pending), ignored, duplicate, other.
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local file = os.getenv("BENCH_REQUESTS")
  local nthreads = tonumber(os.getenv("BENCH_THREADS"))
  reqs = {}
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == id then
      local d, sig, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/webhooks/github", {
        ["Content-Type"] = "application/json",
        ["X-GitHub-Event"] = "push",
        ["X-GitHub-Delivery"] = d,
        ["X-GitHub-Hook-ID"] = "4242",
        ["X-Hub-Signature-256"] = sig,
        ["User-Agent"] = "GitHub-Hookshot/bench",
      }, body)
    end
    i = i + 1
  end
  n = 0
  wrap = os.getenv("BENCH_WRAP") == "1"
  exhausted = 0
  accepted, retried, ignored, duplicate, other = 0, 0, 0, 0, 0
end

function request()
  n = n + 1
  if n > #reqs and wrap then
    n = 1
  elseif n > #reqs then
    -- Out of distinct deliveries: stop this thread rather than send one again.
    exhausted = 1
    wrk.thread:stop()
    n = #reqs
  end
  return reqs[n]
end

function response(status, headers, body)
  if status == 202 and body:find('"retry":true', 1, true) then
    retried = retried + 1
  elseif status == 202 then
    accepted = accepted + 1
  elseif status == 200 and body:find('"duplicate"', 1, true) then
    duplicate = duplicate + 1
  elseif status == 200 and body:find('"ignored"', 1, true) then
    ignored = ignored + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  local acc, ret, ign, dup, oth, ran_out = 0, 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    acc = acc + t:get("accepted")
    ret = ret + t:get("retried")
    ign = ign + t:get("ignored")
    dup = dup + t:get("duplicate")
    oth = oth + t:get("other")
    ran_out = ran_out + t:get("exhausted")
  end
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d accepted=%d retried=%d ignored=%d duplicate=%d other=%d errors=%d%s\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.requests, acc, ret, ign, dup, oth, errors,
    ran_out > 0 and " RAN-OUT-OF-REQUESTS(raise REQUESTS)" or ""))
end
