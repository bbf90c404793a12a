-- conf: in-sender.conf
-- inbound = ( { from = [ "*@partner.test" ]; require = "tls"; action = "reject"; } ):
-- without TLS, MAIL FROM a partner address is rejected with a reply code
-- (SMFIR_REPLYCODE; the text, which miltertest does not expose, is checked
-- in the daemon log: t-in-sender-notls.log-expect). Other senders, and
-- sub.partner.test (*@ is that domain only), pass.
dofile(lib)

step("plain SMTP, MAIL FROM:<sales@partner.test>: rejected with a reply code")
local c = connect({ ip = "198.51.100.20" })
helo(c, nil)
check(mail(c, "sales@partner.test") == SMFIR_REPLYCODE,
      "MAIL from partner without TLS: expected SMFIR_REPLYCODE, got " .. reply_name(mt.getreply(c)))

step("same connection, MAIL FROM:<Sales@PARTNER.test>: rejected (case-insensitive)")
check(mail(c, "Sales@PARTNER.test") == SMFIR_REPLYCODE, "mixed-case partner sender not rejected")

step("reply template with the sender's address, which holds a '%': still a reply code")
-- The daemon turns '%' (and anything outside printable ASCII) in client-chosen
-- text into '?' (policy/maps.cpp expand()); the reply must still be a reply code.
check(mail(c, "50%off@quoted.test") == SMFIR_REPLYCODE,
      "50%off@quoted.test: expected SMFIR_REPLYCODE, got " .. reply_name(mt.getreply(c)))

step("same connection, MAIL FROM:<someone@other.test>: accepted, whole message passes")
transaction(c, "someone@other.test", { "alice@ourcorp.test" })
expect_no_header(c, "X-TLSLevel")
mt.disconnect(c)

step("sub.partner.test is not *@partner.test: accepted")
c = connect({ ip = "198.51.100.20" })
helo(c, nil)
check(mail(c, "x@sub.partner.test") == SMFIR_CONTINUE, "x@sub.partner.test rejected")
mt.disconnect(c)
