-- conf: outbound.conf
-- Outbound mail whose strictest level is none (default = "none" and no
-- rule, or a rule with level none) gets no X-TLSLevel header at all.
dofile(lib)

step("authenticated, no rule matches, default none: no header")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@nowhere.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
  expect_nothing_deleted(c)
end)

step("authenticated, a rule with level none: no header")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@plain.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)

step("authenticated, two recipients both none: no header")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "a@nowhere.test", "b@plain.test" }, function(c)
  expect_no_header(c, "X-TLSLevel")
end)
