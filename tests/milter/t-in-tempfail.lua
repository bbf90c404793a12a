-- action = "tempfail": the sender (at MAIL) or the recipient (at RCPT)
-- gets a temporary failure: SMFIR_TEMPFAIL or a reply code; the code's
-- first digit is checked in the daemon log (t-in-tempfail.log-expect): 4xx,
-- also when a rule's own reply template says 5xx. The rest of the
-- transaction goes on after a recipient's tempfail.
dofile(lib)
local TEMP = { SMFIR_TEMPFAIL, SMFIR_REPLYCODE }

step("MAIL FROM:<x@soft.test> without TLS: temporary failure")
local c = connect({ ip = "198.51.100.50" })
helo(c, nil)
mail(c, "x@soft.test")
expect_reply(c, TEMP, "MAIL FROM:<x@soft.test>")

step("MAIL FROM:<y@custom.test>, reply template 550 5.7.1: temporary failure (4.7.1)")
mail(c, "y@custom.test")
expect_reply(c, TEMP, "MAIL FROM:<y@custom.test>")

step("RCPT TO:<shared@ourcorp.test>: temporary failure, next recipient accepted, message passes")
check(mail(c, "z@example.test") == SMFIR_CONTINUE, "MAIL FROM:<z@example.test> not accepted")
rcpt(c, "shared@ourcorp.test")
expect_reply(c, TEMP, "RCPT TO:<shared@ourcorp.test>")
check(rcpt(c, "bob@ourcorp.test") == SMFIR_CONTINUE, "bob@ourcorp.test not accepted")
check(message(c) == SMFIR_CONTINUE, "message not accepted")
mt.disconnect(c)

step("over TLS: accepted")
one_message({ ip = "198.51.100.50", tls = { version = "TLSv1.3", bits = 256 } }, "x@soft.test", { "shared@ourcorp.test" })
