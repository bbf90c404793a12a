-- conf: outbound.conf
-- Several recipients: the strictest level wins, whatever the order.
dofile(lib)

local cases = {
  { { "a@may.test", "b@enc.test" }, "Require", "may then encrypt" },
  { { "b@enc.test", "a@may.test" }, "Require", "encrypt then may" },
  { { "a@nowhere.test", "b@may.test", "c@enc.test", "d@plain.test" }, "Require", "none, may, encrypt, none" },
  { { "a@may.test", "ops@bank.test" }, "Require", "may then verify" },
  { { "a@nowhere.test", "b@may.test" }, "Try", "none then may" },
  { { "a@may.test", "b@nowhere.test" }, "Try", "may then none" },
  { { "a@dane.test", "b@may.test" }, "Try", "dane (opportunistic) then may" },
}
for _, case in ipairs(cases) do
  step(case[3] .. ": " .. case[2])
  one_message({ auth = "alice" }, "alice@ourcorp.test", case[1], function(c)
    expect_one_header(c, "X-TLSLevel", case[2])
  end)
end
