-- conf: outbound.conf
-- An authenticated client ({auth_authen} at MAIL) is outbound: at end of
-- message exactly one X-TLSLevel header is inserted at index 0, "Require"
-- when a recipient's level is encrypt or stricter, "Try" for may. The same
-- mail from an unauthenticated client is inbound and gets no header; an
-- authenticated user is not held to inbound sender rules.
dofile(lib)

step("authenticated, recipient at an encrypt domain: Require")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
  expect_nothing_deleted(c)
end)

step("authenticated, recipient at a may domain: Try")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Try")
end)

step("authenticated, verify (stricter than encrypt): Require")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "ops@bank.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("authenticated, subdomain of the encrypt domain: Require")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "x@mail.enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)

step("not authenticated (inbound), same recipient: no header")
one_message({}, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("authenticated sender at partner.test without TLS: outbound, inbound rule not applied")
one_message({ auth = "pat" }, "pat@partner.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)
