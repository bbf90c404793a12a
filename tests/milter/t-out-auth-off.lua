-- milter.authenticated_is_outbound = false: an authenticated client is
-- inbound (no header); a client in outbound_clients is still outbound.
dofile(lib)

step("authenticated, not listed: no header")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("listed client 10.0.0.7: Require")
one_message({ ip = "10.0.0.7" }, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)
