"""Where events come from: a recording (``replay``), a generator (``synthetic``), or this
machine's live sensors (``live``). Each is an async iterable of ``Event`` the host consumes."""
