//! The handlers: what each route does with the store and the board, the
//! admin and same-origin checks, and the rate limits applied to votes.

use super::*;

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`).
pub(super) fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// A state-changing request that carries an `Origin` must come from this
/// server's own origin (the page it serves): same scheme-less host and port
/// as the request's `Host`. `Sec-Fetch-Site: cross-site` is refused too.
pub(super) fn check_same_origin(request: &Request) -> Result<(), ApiError> {
    if let Some(site) = request.header("sec-fetch-site")
        && site.eq_ignore_ascii_case("cross-site")
    {
        return Err(ApiError::CrossOrigin(format!("Sec-Fetch-Site: {site}")));
    }
    let Some(origin) = request.header("origin") else { return Ok(()) };
    let same = origin
        .strip_prefix("http://")
        .zip(request.header("host"))
        .is_some_and(|(o, host)| o.trim_end_matches('/').eq_ignore_ascii_case(host.trim()));
    if same { Ok(()) } else { Err(ApiError::CrossOrigin(origin.to_owned())) }
}


impl App for Api {
    fn admit(&self, request: &Request) -> Result<(), Response> {
        self.check(request).map_err(|e| {
            log::debug!("voting server: {} {:?}: {e}", request.method, request.path);
            e.response()
        })
    }

    fn respond(&self, request: &Request, body: Vec<u8>, later: &mut Option<Later>) -> Option<Response> {
        self.handle(request, body, later).unwrap_or_else(|e| {
            log::debug!("voting server: {} {:?}: {e}", request.method, request.path);
            Some(e.response())
        })
    }
}

impl Api {
    /// What can be told from the head alone: the route, the host, the
    /// origin, the token, the declared body's size and type.
    pub(super) fn check(&self, request: &Request) -> Result<(), ApiError> {
        let segments = split_path(&request.path)?;
        let path: Vec<&str> = segments.iter().map(String::as_str).collect();
        let Some(route) = resolve(&request.method, &path) else {
            let allow: Vec<&str> =
                METHODS.into_iter().filter(|m| resolve(m, &path).is_some()).collect();
            return Err(if allow.is_empty() {
                ApiError::NotFound
            } else {
                ApiError::MethodNotAllowed(allow.join(", "))
            });
        };
        self.check_host(request)?;
        let changes_state = matches!(request.method.as_str(), "POST" | "DELETE");
        if changes_state {
            check_same_origin(request)?;
        }
        if route.is_admin() && !self.authorized(request) {
            return Err(ApiError::Unauthorized);
        }
        if request.content_length() > self.max_body as u64 {
            return Err(ApiError::PayloadTooLarge(self.max_body));
        }
        // A browser sends application/json to another origin only after a
        // CORS preflight, which this server never grants: no page elsewhere
        // can change anything, body or not.
        if changes_state && !is_json(request.header("content-type")) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(())
    }

    /// Answers a request [`Api::check`] admitted, given its body: reads at
    /// once, changes through `later` once they are on disk.
    pub(super) fn handle(
        &self,
        request: &Request,
        raw: Vec<u8>,
        later: &mut Option<Later>,
    ) -> Result<Option<Response>, ApiError> {
        let segments = split_path(&request.path)?;
        let path: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = resolve(&request.method, &path).ok_or(ApiError::NotFound)?;
        // Each route below answers once, so `later` is there to take.
        let mut later = || later.take().ok_or(ApiError::Internal);
        let response = match route {
            Route::Page => Ok(page_response()),
            Route::Events => Ok(self.events_response()),
            Route::Tally => Ok(json_response(200, &tally_of(&self.board.standing.load()))),
            Route::Vote => {
                let VoteRequest { candidate, voter } = parse(&raw)?;
                return self.vote(request, candidate, voter, later()?);
            }
            Route::Reset => return self.submit(Event::ResetVotes, 200, later()?, None),
            Route::Candidates => Ok(self.candidates()),
            Route::Create => {
                let CreateCandidateRequest { name, members } = parse(&raw)?;
                return self.submit(Event::CreateCandidate { name, members }, 201, later()?, None);
            }
            Route::Delete(name) => {
                return self.submit(Event::DeleteCandidate { name: name.into() }, 200, later()?, None);
            }
            Route::AddMember(name) => {
                let member = parse(&raw)?;
                let event = Event::AddMember { candidate: name.into(), member };
                return self.submit(event, 200, later()?, None);
            }
            Route::RemoveMember(name) => {
                let member = parse(&raw)?;
                let event = Event::RemoveMember { candidate: name.into(), member };
                return self.submit(event, 200, later()?, None);
            }
            Route::Schedule => Ok(self.schedule()),
            Route::Stats => Ok(json_response(200, &**self.board.metrics.load())),
        };
        response.map(Some)
    }

    /// The `Host` header must name an IP address, `localhost`, or a name
    /// given with `--allow-host`: a page served from another name that
    /// resolves here (DNS rebinding) is refused. A request without one
    /// (HTTP/1.0) passes: browsers always send it.
    pub(super) fn check_host(&self, request: &Request) -> Result<(), ApiError> {
        let Some(host) = request.header("host") else { return Ok(()) };
        let name = host_name(host).to_ascii_lowercase();
        let ip = name.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || self.allow_hosts.iter().any(|a| *a == name || *a == host.to_ascii_lowercase())
        {
            Ok(())
        } else {
            Err(ApiError::ForeignHost(host.to_owned()))
        }
    }

    pub(super) fn authorized(&self, request: &Request) -> bool {
        let Some(token) = &self.admin_token else { return true };
        let Some((scheme, given)) = request.header("authorization").and_then(|h| h.split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    /// Submits `event`; once it is on disk (or refused), `later` gets the
    /// new tally with `status` (or the error), and a refusal first runs
    /// `undo`. Never waits: what the store queues shares the next sync.
    pub(super) fn submit(
        &self,
        event: Event,
        status: u16,
        later: Later,
        undo: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Option<Response>, ApiError> {
        self.store.submit_then(
            event,
            Box::new(move |result| {
                let response = match result {
                    Ok(standing) => json_response(status, &tally_of(&standing)),
                    Err(e) => {
                        if let Some(undo) = undo {
                            undo();
                        }
                        ApiError::from(e).response()
                    }
                };
                later.send(response);
            }),
        );
        Ok(None)
    }

    pub(super) fn vote(
        &self,
        request: &Request,
        candidate: String,
        voter: String,
        later: Later,
    ) -> Result<Option<Response>, ApiError> {
        let event = Event::Vote { candidate, voter: voter.clone() };
        if self.vote_interval.is_zero() {
            return self.submit(event, 200, later, None);
        }
        // The voter's and the address's slots are taken before the submit
        // and given back if it fails, so two votes of one voter (or from
        // one address) cannot both pass, and no lock is held across the
        // journal's disk write.
        let now = Instant::now();
        let from = self.client_address(request);
        let previous = lock(&self.last_vote).admit(&voter, now, self.vote_interval)?;
        let previous_from = match &from {
            Some(addr) => match lock(&self.last_vote_from).admit(addr, now, self.vote_interval) {
                Ok(p) => p,
                Err(e) => {
                    lock(&self.last_vote).undo(&voter, now, previous);
                    return Err(e);
                }
            },
            None => None,
        };
        let (by_voter, by_address) = (Arc::clone(&self.last_vote), Arc::clone(&self.last_vote_from));
        let undo = move || {
            lock(&by_voter).undo(&voter, now, previous);
            if let Some(addr) = &from {
                lock(&by_address).undo(addr, now, previous_from);
            }
        };
        self.submit(event, 200, later, Some(Box::new(undo)))
    }

    /// Who a vote comes from, for the vote interval: the connection's
    /// address, or with `trust_forwarded_for` the last `X-Forwarded-For`
    /// entry. An IPv6 client counts by its /64 (one host usually holds a
    /// whole /64 and can pick any address in it).
    pub(super) fn client_address(&self, request: &Request) -> Option<String> {
        let forwarded = || {
            let list = request.header("x-forwarded-for")?;
            list.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        };
        let ip = if self.trust_forwarded_for { forwarded().or(request.peer) } else { request.peer };
        Some(match ip? {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        })
    }

    pub(super) fn candidates(&self) -> Response {
        let standing = self.board.standing.load();
        let observations = self.board.observations.load();
        let view: Vec<Candidate> = standing
            .candidates
            .iter()
            .map(|c| Candidate {
                name: c.name.clone(),
                votes: c.votes,
                members: c.members.clone(),
                live: observations.members.get(&c.name).cloned().unwrap_or_default(),
            })
            .collect();
        json_response(200, &view)
    }

    pub(super) fn schedule(&self) -> Response {
        let standing = self.board.standing.load();
        let observations = self.board.observations.load();
        let owner: HashMap<i32, &str> = observations
            .members
            .iter()
            .flat_map(|(name, live)| live.iter().map(move |m| (m.pid, name.as_str())))
            .collect();
        let view = Schedule {
            window_ms: observations.window_ms,
            leader: standing_leader(&standing).map(str::to_owned),
            candidates: standing
                .candidates
                .iter()
                .map(|c| {
                    let share = observations.candidate_shares.get(&c.name).cloned().unwrap_or_default();
                    (c.name.clone(), share)
                })
                .collect(),
            pids: observations
                .pid_shares
                .iter()
                .map(|(&pid, s)| {
                    let candidate = owner.get(&pid).map(|c| c.to_string());
                    (pid, PidShare { share: s.share, cpu_ns: s.cpu_ns, candidate })
                })
                .collect(),
        };
        json_response(200, &view)
    }
}
