-- conf: in-sender.conf
-- STARTTLS as Postfix presents it to a milter: the EHLO before STARTTLS
-- without TLS macros, an abort (the reset), then a second EHLO carrying
-- {tls_version} {cipher} {cipher_bits}. MAIL from a sender that must use
-- TLS then passes, and keeps passing in later transactions on the same
-- connection. Without the second, TLS-bearing EHLO it is rejected.
dofile(lib)

step("control: EHLO without TLS, MAIL FROM partner: rejected")
local c = connect({ ip = "198.51.100.70" })
helo(c, nil)
check(mail(c, "sales@partner.test") == SMFIR_REPLYCODE, "partner sender accepted without TLS")
mt.disconnect(c)

step("EHLO, STARTTLS (abort + EHLO with TLSv1.3/256), MAIL FROM partner: accepted")
c = connect({ ip = "198.51.100.70" })
helo(c, nil)
check(mt.abort(c) == nil, "mt.abort failed")
helo(c, { version = "TLSv1.3", bits = 256 })
transaction(c, "sales@partner.test", { "alice@ourcorp.test" })

step("second transaction on the TLS connection: accepted")
transaction(c, "billing@partner.test", { "bob@ourcorp.test" })

step("RSET-style abort mid-transaction on the TLS connection, then MAIL again: accepted")
check(mail(c, "sales@partner.test") == SMFIR_CONTINUE, "MAIL after TLS not accepted")
check(mt.abort(c) == nil, "mt.abort failed")
transaction(c, "sales@partner.test", { "alice@ourcorp.test" })
mt.disconnect(c)

step("EHLO, abort, EHLO again still without TLS: rejected")
c = connect({ ip = "198.51.100.70" })
helo(c, nil)
check(mt.abort(c) == nil, "mt.abort failed")
helo(c, nil)
check(mail(c, "sales@partner.test") == SMFIR_REPLYCODE, "partner sender accepted after an abort without TLS")
mt.disconnect(c)

step("EHLO, STARTTLS (abort), no second EHLO, TLS macros with MAIL: accepted")
-- Postfix sends them with MAIL because the milter asks for them there
-- (smfi_setsymlist) or the admin lists them in milter_mail_macros.
c = connect({ ip = "198.51.100.70" })
helo(c, nil)
check(mt.abort(c) == nil, "mt.abort failed")
local ok_macro = mt.macro(c, SMFIC_MAIL, "{tls_version}", "TLSv1.3", "{cipher}", "TLS_AES_256_GCM_SHA384",
                    "{cipher_bits}", "256")
check(ok_macro == nil, "mt.macro(SMFIC_MAIL) failed")
check(mail(c, "sales@partner.test") == SMFIR_CONTINUE, "MAIL with TLS macros at MAIL rejected")
mt.disconnect(c)
