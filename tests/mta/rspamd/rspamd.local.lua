-- /etc/rspamd/rspamd.local.lua: the envelope sender is <> or postmaster@ (false if the MTA didn't say)
rspamd_config.BOUNCE_OR_POSTMASTER_SENDER = {
  callback = function(task)
    if not task:has_from('smtp') then return false end
    local from = task:get_from('smtp')[1]
    return from.addr == '' or from.user:lower() == 'postmaster'
  end,
  score = 0.0,
  description = 'Envelope sender is <> or postmaster@',
}
