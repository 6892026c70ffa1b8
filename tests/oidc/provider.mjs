// A real OpenID Connect provider for AtlasLab's login tests (the npm package `oidc-provider`).
//
//   node tests/oidc/provider.mjs PORT CONFIG.json
//
// CONFIG.json: {"clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
//               "accounts": {"alice": {"preferred_username": "alice", "email": ..., "groups": [...], ...}}}
//
// Every account field is released as a claim (userinfo and id_token alike), so one account can stand
// for a Keycloak, Google, Entra ID, GitHub or 42 intranet user. Logging in is not interactive: the
// interaction page logs in the account named by the `oidc_test_account` cookie (or the authorize
// request's `login_hint`) and consents to everything asked.
//
// Besides the OpenID Connect endpoints (discovery, /auth, /token, /me, /jwks), two plain OAuth 2.0
// "user" APIs accept any access token, whatever its scopes, like GitHub's and the 42 intranet's do:
//   GET /api/user, /api/v2/me          the account's fields as JSON
//   GET /api/user/emails               GitHub's list of the account's addresses
//   GET /api/orgs/ORG/members/LOGIN    204 if the account has ORG in its `orgs` field, else 404

import { readFileSync } from 'node:fs';
import http from 'node:http';

import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const [port, configPath] = process.argv.slice(2);
if (!port || !configPath) {
  console.error('usage: node provider.mjs PORT CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accounts = config.accounts ?? {};
const issuer = `http://127.0.0.1:${port}`;

const claimNames = new Set(['sub']);
for (const account of Object.values(accounts)) {
  for (const name of Object.keys(account)) claimNames.add(name);
}

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await exportJWK(privateKey)), kid: 'test', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  jwks: { keys: [signingKey] },
  claims: { openid: [...claimNames] },
  // OpenID Connect's scopes plus those GitHub and the 42 intranet know (any is accepted and granted)
  scopes: ['openid', 'profile', 'email', 'offline_access', 'public', 'read:user', 'user:email', 'read:org'],
  conformIdTokenClaims: false, // Entra ID puts the user's claims in the id_token
  features: { devInteractions: { enabled: false } },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['atlaslab-test-provider'] },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
  },
  async findAccount(_ctx, id) {
    if (!accounts[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...accounts[id] }) };
  },
});

function cookie(req, name) {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return decodeURIComponent(value.join('='));
  }
  return undefined;
}

function send(res, status, body) {
  res.statusCode = status;
  if (body === undefined) {
    res.end();
    return;
  }
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.setHeader('Content-Type', typeof body === 'string' ? 'text/plain' : 'application/json');
  res.end(text);
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const name = cookie(req, 'oidc_test_account') ?? params.login_hint;
    if (!accounts[name]) {
      send(res, 400, `unknown test account ${JSON.stringify(name)}; set the oidc_test_account cookie`);
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: name } }, { mergeWithLastSubmission: false });
    return;
  }
  // consent: grant whatever the client asked for
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

async function tokenAccount(req) {
  const match = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (!match) return undefined;
  const token = await provider.AccessToken.find(match[1]);
  if (!token || token.isExpired) return undefined;
  return token.accountId;
}

async function userApi(req, res, path) {
  const id = await tokenAccount(req);
  if (!id || !accounts[id]) {
    send(res, 401, { message: 'Bad credentials' });
    return;
  }
  const account = { id, login: id, ...accounts[id] };
  const member = /^\/api\/orgs\/([^/]+)\/members\/([^/]+)$/.exec(path);
  if (member) {
    const [, org, login] = member.map(decodeURIComponent);
    send(res, login === account.login && (account.orgs ?? []).includes(org) ? 204 : 404);
  } else if (path === '/api/user' || path === '/api/v2/me') {
    send(res, 200, account);
  } else if (path === '/api/user/emails') {
    send(res, 200, account.email ? [{ email: account.email, primary: true, verified: true }] : []);
  } else {
    send(res, 404, { message: 'Not Found' });
  }
}

const oidc = provider.callback();
const server = http.createServer((req, res) => {
  const path = new URL(req.url, issuer).pathname;
  let handled;
  if (path.startsWith('/interaction/')) handled = interaction(req, res);
  else if (path.startsWith('/api/')) handled = userApi(req, res, path);
  else return oidc(req, res);
  handled.catch((err) => {
    console.error(err);
    if (!res.headersSent) send(res, 500, String(err));
  });
});

server.listen(Number(port), '127.0.0.1', () => console.log(`oidc test provider listening on ${issuer}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
