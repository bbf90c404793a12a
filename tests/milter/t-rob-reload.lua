-- extra-conf: t-rob-reload.next.conf
-- SIGHUP reloads the policy while a milter connection is open. libmilter's
-- own signal handling is disabled on purpose (it would stop the milter on
-- SIGHUP): after the reload the open connection and new ones are served,
-- and once the policy file changed, the next transaction on that same
-- connection follows the new rules.
dofile(lib)

local a = connect({ ip = "203.0.113.20" })
helo(a, nil)

step("v1 on connection A: late.test sender accepted, may.test is Try")
transaction(a, "x@late.test", { "legal@ourcorp.test" })
transaction(a, "alice@ourcorp.test", { "bob@may.test" }, { auth = "alice" })
expect_one_header(a, "X-TLSLevel", "Try")

step("SIGHUP, same policy: reloaded, the daemon and the milter keep serving")
sighup()
wait_log("reloaded ", 1)
check(daemon_alive(), "the daemon died on SIGHUP")
transaction(a, "x@late.test", { "bob@ourcorp.test" }, { auth_sent = true })
local b = connect({ ip = "203.0.113.21" })
helo(b, nil)
check(mail(b, "y@partner.test") == SMFIR_REPLYCODE, "new connection after SIGHUP: partner not rejected")
mt.disconnect(b)

step("install v2 and SIGHUP")
install_config(dir .. "/t-rob-reload.next.conf")
sighup()
wait_log("3 inbound rules", 1)
check(daemon_alive(), "the daemon died on the second reload")

step("v2 on the still-open connection A: late.test rejected, legal@ refused at DATA, may.test Require")
check(mail(a, "x@late.test") == SMFIR_REPLYCODE, "late.test sender not rejected under v2")
check(mail(a, "y@other.test") == SMFIR_CONTINUE, "y@other.test not accepted")
-- A was negotiated under v1, which has no rule that stops mail at RCPT:
-- the MTA reads no reply there, so v2's legal@ rule refuses the message at
-- DATA on this connection (new connections get the reply at RCPT, below).
check(mt.test_option(a, SMFIP_NR_RCPT), "connection A under v1 (no recipient rule) asked for a reply at RCPT")
check(not mt.test_option(a, SMFIP_NR_MAIL), "connection A under v1 (a sender rule) asked for no reply at MAIL")
check(rcpt(a, "legal@ourcorp.test") == SMFIR_CONTINUE, "RCPT legal@ without a reply")
mt.data(a)
check(mt.getreply(a) == SMFIR_REPLYCODE, "legal@ not refused at DATA under v2")
check(mt.abort(a) == nil, "mt.abort")
transaction(a, "alice@ourcorp.test", { "bob@may.test" }, { auth = "alice" })
expect_one_header(a, "X-TLSLevel", "Require")
mt.disconnect(a)

step("a new connection under v2: a reply at RCPT, legal@ rejected there")
local n = connect({ ip = "203.0.113.22" })
helo(n, nil)
check(not mt.test_option(n, SMFIP_NR_RCPT), "a connection under v2 (a recipient rule) asked for no reply at RCPT")
check(mail(n, "y@other.test") == SMFIR_CONTINUE, "y@other.test not accepted")
check(rcpt(n, "legal@ourcorp.test") == SMFIR_REPLYCODE, "legal@ not rejected at RCPT under v2")
mt.disconnect(n)

step("a new connection under v2")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)
