-- An exemption rule (require = "none") for noreply@partner.test beats the
-- *@partner.test rule: that sender passes without TLS (also with an
-- +extension and in another case); the rest of partner.test is rejected.
dofile(lib)

local cases = {
  { "noreply@partner.test", SMFIR_CONTINUE },
  { "NoReply+bounce@Partner.TEST", SMFIR_CONTINUE },
  { "sales@partner.test", SMFIR_REPLYCODE },
  { "noreply2@partner.test", SMFIR_REPLYCODE },
}
local c = connect({ ip = "198.51.100.80" })
helo(c, nil)
for _, k in ipairs(cases) do
  step(string.format("MAIL FROM:<%s> without TLS: %s", k[1], reply_name(k[2])))
  local r = mail(c, k[1])
  check(r == k[2], string.format("expected %s, got %s", reply_name(k[2]), reply_name(r)))
  if r == SMFIR_CONTINUE then check(mt.abort(c) == nil, "mt.abort failed") end
end

step("the exempt sender's whole message passes")
transaction(c, "noreply@partner.test", { "alice@ourcorp.test" })
mt.disconnect(c)
