-- milter.header / header_require / header_try rename the header and its
-- values; forged copies of the configured name (any case) are deleted, and
-- the default name X-TLSLevel is then nobody's business.
dofile(lib)

step("encrypt recipient: X-Enc-Policy: yes, no X-TLSLevel")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_one_header(c, "X-Enc-Policy", "yes")
  check(#added_headers(c, "X-TLSLevel") == 0, "X-TLSLevel added although the header is renamed")
end)

step("may recipient: X-Enc-Policy: opportunistic")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@may.test" }, function(c)
  expect_one_header(c, "X-Enc-Policy", "opportunistic")
end)

step("forged x-enc-policy deleted, client's X-TLSLevel left alone")
one_message({ auth = "alice", headers = { { "x-enc-policy", "opportunistic" }, { "X-TLSLevel", "Try" } } },
  "alice@ourcorp.test", { "bob@enc.test" }, function(c)
  expect_deleted(c, "X-Enc-Policy", 1)
  check(not mt.eom_check(c, MT_HDRDELETE, "X-TLSLevel"), "X-TLSLevel deleted although the header is renamed")
  expect_one_header(c, "X-Enc-Policy", "yes")
end)

step("no rule: no header")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@nowhere.test" }, function(c)
  expect_no_header(c, "X-Enc-Policy")
end)
