-- Recipient rules are enforced at RCPT and reject only that recipient:
-- the other recipients of the same transaction go on and the message is
-- accepted for them. Over TLS every recipient is accepted.
dofile(lib)

step("plain SMTP: bob ok, legal rejected, ceo rejected, carol ok, message passes")
local c = connect({ ip = "198.51.100.40" })
-- Only recipient rules: the milter asks for a reply at RCPT, none at MAIL.
check(not mt.test_option(c, SMFIP_NR_RCPT), "SMFIP_NR_RCPT negotiated although recipient rules can reject")
check(mt.test_option(c, SMFIP_NR_MAIL), "SMFIP_NR_MAIL not negotiated although no rule can stop mail at MAIL")
helo(c, nil)
check(mail(c, "someone@example.test") == SMFIR_CONTINUE, "MAIL rejected")
check(rcpt(c, "bob@ourcorp.test") == SMFIR_CONTINUE, "bob rejected")
local r = rcpt(c, "legal@ourcorp.test")
check(r == SMFIR_REPLYCODE, "legal@: expected SMFIR_REPLYCODE, got " .. reply_name(r))
r = rcpt(c, "CEO+x@OurCorp.test")
check(r == SMFIR_REPLYCODE, "CEO+x@OurCorp.test: expected SMFIR_REPLYCODE, got " .. reply_name(r))
check(rcpt(c, "carol@ourcorp.test") == SMFIR_CONTINUE, "carol rejected after another recipient was")
r = message(c)
check(r == SMFIR_CONTINUE, "end of message: expected SMFIR_CONTINUE, got " .. reply_name(r))
expect_no_header(c, "X-TLSLevel")

step("same connection: legal@ of another of our domains (bare local part) rejected")
check(mail(c, "someone@example.test") == SMFIR_CONTINUE, "MAIL rejected")
r = rcpt(c, "legal@subsidiary.test")
check(r == SMFIR_REPLYCODE, "legal@subsidiary.test: expected SMFIR_REPLYCODE, got " .. reply_name(r))
mt.abort(c)
mt.disconnect(c)

step("TLS: legal and ceo accepted")
one_message({ ip = "198.51.100.40", tls = { version = "TLSv1.3", bits = 256 } }, "someone@example.test",
  { "legal@ourcorp.test", "ceo@ourcorp.test", "bob@ourcorp.test" })
