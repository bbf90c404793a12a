-- conf: outbound.conf
-- An address rule (auditor@lawfirm.test: encrypt) beats its domain's rule
-- (lawfirm.test: may) for that recipient only; the address is matched
-- without the +extension and case-insensitively.
dofile(lib)

local cases = {
  { "auditor@lawfirm.test", "Require" },
  { "clerk@lawfirm.test", "Try" },
  { "auditor+q3@lawfirm.test", "Require" },
  { "AUDITOR@LawFirm.TEST", "Require" },
  { "auditor@branch.lawfirm.test", "Try" },   -- the address rule is for lawfirm.test itself
}
for _, case in ipairs(cases) do
  step(case[1] .. ": " .. case[2])
  one_message({ auth = "alice" }, "alice@ourcorp.test", { case[1] }, function(c)
    expect_one_header(c, "X-TLSLevel", case[2])
  end)
end

step("clerk and auditor in one message: Require")
one_message({ auth = "alice" }, "alice@ourcorp.test", { "clerk@lawfirm.test", "auditor@lawfirm.test" }, function(c)
  expect_one_header(c, "X-TLSLevel", "Require")
end)
