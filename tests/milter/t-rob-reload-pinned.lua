-- conf: t-rob-reload.conf
-- extra-conf: t-rob-reload.next.conf
-- A transaction keeps the policy that was current at its MAIL FROM: a
-- reload between two recipients does not change the rules mid-message
-- (outbound header or inbound recipient rule); the next transaction uses
-- the new policy.
dofile(lib)

local a = connect({ ip = "203.0.113.30" })
helo(a, nil)
local b = connect({ ip = "203.0.113.31" })
helo(b, nil)

step("A outbound: MAIL and first RCPT under v1 (may.test = may)")
check(mail(a, "alice@ourcorp.test", { auth = "alice" }) == SMFIR_CONTINUE, "MAIL")
check(rcpt(a, "bob@may.test") == SMFIR_CONTINUE, "RCPT bob")
step("B inbound: MAIL under v1 (no legal@ rule)")
check(mail(b, "y@other.test") == SMFIR_CONTINUE, "MAIL")

step("reload to v2 mid-message (may.test = encrypt, legal@ needs TLS)")
install_config(dir .. "/t-rob-reload.next.conf")
sighup()
wait_log("3 inbound rules", 1)

step("A: second RCPT and end of message still under v1: Try")
check(rcpt(a, "carol@may.test") == SMFIR_CONTINUE, "RCPT carol")
check(message(a) == SMFIR_CONTINUE, "end of message")
expect_one_header(a, "X-TLSLevel", "Try")

step("B: RCPT legal@ still under v1: accepted")
check(rcpt(b, "legal@ourcorp.test") == SMFIR_CONTINUE, "legal@ rejected mid-transaction after the reload")
check(message(b) == SMFIR_CONTINUE, "end of message")

step("A next transaction under v2: Require")
transaction(a, "alice@ourcorp.test", { "bob@may.test" }, { auth = "alice" })
expect_one_header(a, "X-TLSLevel", "Require")
mt.disconnect(a)

step("B next transaction under v2: legal@ refused (at DATA: B was opened under v1, no reply at RCPT)")
check(mail(b, "y@other.test") == SMFIR_CONTINUE, "MAIL")
check(rcpt(b, "legal@ourcorp.test") == SMFIR_CONTINUE, "RCPT legal@ without a reply")
mt.data(b)
check(mt.getreply(b) == SMFIR_REPLYCODE, "legal@ not refused at DATA under v2")
mt.disconnect(b)
