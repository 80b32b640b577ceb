#!/usr/bin/env node
// Development OpenID provider for Lifeline: npm `oidc-provider` (certified), served at Keycloak's URL
// paths so that the same client code (python-keycloak, lifeline.kit.auth) talks to this and to a real
// Keycloak. Several realms are served by one process: one Provider per realm, mounted under
// /realms/<realm>. NOT for production: dev-only endpoints under /_dev/ can mint clients and keys.
//
// Usage: node server.js [--config realm.json] [--port 8180] [--host 127.0.0.1] [--issuer-base URL]
// Env:   IDP_CONFIG, IDP_PORT, IDP_HOST, IDP_ISSUER_BASE, IDP_KEYS_FILE (persist signing keys),
//        IDP_DEV_ENDPOINTS=0 (disable /_dev/*).
// Prints `READY <port>` on stdout once listening (port 0 picks a free port).

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const here = path.dirname(fileURLToPath(import.meta.url));

const { values: argv } = parseArgs({
  options: {
    config: { type: 'string', short: 'c' },
    port: { type: 'string', short: 'p' },
    host: { type: 'string', short: 'H' },
    'issuer-base': { type: 'string' },
    'keys-file': { type: 'string' },
  },
  allowPositionals: false,
});

const configPath = path.resolve(argv.config ?? process.env.IDP_CONFIG ?? path.join(here, 'realm.json'));
const host = argv.host ?? process.env.IDP_HOST ?? '127.0.0.1';
const requestedPort = Number.parseInt(argv.port ?? process.env.IDP_PORT ?? '8180', 10);
const keysFile = argv['keys-file'] ?? process.env.IDP_KEYS_FILE ?? null;
const devEndpoints = (process.env.IDP_DEV_ENDPOINTS ?? '1') !== '0';

// Keycloak's endpoint layout under the realm prefix.
const ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  token: '/protocol/openid-connect/token',
  jwks: '/protocol/openid-connect/certs',
  userinfo: '/protocol/openid-connect/userinfo',
  introspection: '/protocol/openid-connect/token/introspect',
  revocation: '/protocol/openid-connect/revoke',
  end_session: '/protocol/openid-connect/logout',
  device_authorization: '/protocol/openid-connect/auth/device',
  code_verification: '/protocol/openid-connect/device',
  pushed_authorization_request: '/protocol/openid-connect/ext/par/request',
};

const log = (...args) => console.error('[dev-idp]', ...args);

function fail(message) {
  console.error(`dev-idp: ${message}`);
  process.exit(2);
}

function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    return fail(`cannot read ${file}: ${err.message}`);
  }
}

// ---- configuration -------------------------------------------------------------------------------

class ConfigError extends Error {}

const REALM_RE = /^[A-Za-z0-9_.-]+$/;

function normalizeClient(raw, realmName) {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError('a client must be a JSON object');
  }
  const clientId = raw.client_id;
  if (typeof clientId !== 'string' || !clientId) {
    throw new ConfigError('client_id must be a non-empty string');
  }
  const roles = raw.roles ?? [];
  if (!Array.isArray(roles) || !roles.every((r) => typeof r === 'string' && r)) {
    throw new ConfigError(`client ${clientId}: roles must be a list of strings`);
  }
  if (raw.region !== undefined && raw.region !== null && !/^\d{6}$/.test(String(raw.region))) {
    throw new ConfigError(`client ${clientId}: region must be a six-digit GB/T 2260 code`);
  }
  const ttl = raw.access_token_ttl ?? 300;
  if (!Number.isInteger(ttl) || ttl <= 0) {
    throw new ConfigError(`client ${clientId}: access_token_ttl must be a positive integer (seconds)`);
  }
  const redirectUris = raw.redirect_uris ?? [];
  if (!Array.isArray(redirectUris)) {
    throw new ConfigError(`client ${clientId}: redirect_uris must be a list`);
  }
  return {
    client_id: clientId,
    client_secret: typeof raw.client_secret === 'string' && raw.client_secret
      ? raw.client_secret
      : crypto.randomBytes(24).toString('base64url'),
    roles,
    region: raw.region === undefined || raw.region === null ? null : String(raw.region),
    audience: typeof raw.audience === 'string' && raw.audience ? raw.audience : realmName,
    access_token_ttl: ttl,
    redirect_uris: redirectUris,
  };
}

function normalizeUser(raw) {
  if (raw === null || typeof raw !== 'object' || typeof raw.username !== 'string' || !raw.username) {
    throw new ConfigError('a user needs a non-empty username');
  }
  return {
    username: raw.username,
    roles: Array.isArray(raw.roles) ? raw.roles : [],
    region: raw.region ? String(raw.region) : null,
    name: raw.name ?? raw.username,
    email: raw.email,
  };
}

// ---- keys ---------------------------------------------------------------------------------------

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  // A fresh random kid per key makes rotation visible to verifiers that cache by kid.
  return { ...jwk, kid: crypto.randomBytes(12).toString('base64url'), use: 'sig', alg: 'RS256' };
}

function loadPersistedKeys() {
  if (!keysFile || !fs.existsSync(keysFile)) return {};
  const data = readJson(keysFile);
  return data && typeof data === 'object' ? data : {};
}

function persistKeys(realms) {
  if (!keysFile) return;
  const out = {};
  for (const [name, realm] of realms) out[name] = { keys: realm.keys };
  const tmp = `${keysFile}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(out, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, keysFile);
}

// ---- realms -------------------------------------------------------------------------------------

const realms = new Map();
let issuerBase = null;

function resourceFor(cfg) {
  // Resource indicators must be absolute URIs (RFC 8707); a bare audience like "lifeline" is not, so
  // it is wrapped in a URN and the token's `aud` is set to the plain audience via ResourceServer.audience.
  return URL.canParse(cfg.audience) && /^[a-z][a-z0-9+.-]*:/i.test(cfg.audience)
    ? cfg.audience
    : `urn:lifeline:audience:${encodeURIComponent(cfg.audience)}`;
}

function clientMetadata(cfg) {
  const interactive = cfg.redirect_uris.length > 0;
  return {
    client_id: cfg.client_id,
    client_secret: cfg.client_secret,
    grant_types: interactive
      ? ['client_credentials', 'authorization_code', 'refresh_token']
      : ['client_credentials'],
    response_types: interactive ? ['code'] : [],
    redirect_uris: cfg.redirect_uris,
    // python-keycloak posts the secret in the body; oidc-provider accepts Basic for these clients too.
    token_endpoint_auth_method: 'client_secret_post',
  };
}

function tokenClaimsFor(realm, token) {
  const cfg = realm.clients.get(token.clientId);
  const user = token.accountId ? realm.users.get(token.accountId) : undefined;
  const subject = user ?? cfg;
  if (!subject) return undefined;
  const claims = {
    azp: token.clientId,
    typ: 'Bearer',
    realm_access: { roles: [...subject.roles] },
    preferred_username: user ? user.username : `service-account-${token.clientId}`,
  };
  if (subject.region) claims.region = subject.region;
  return claims;
}

function buildProvider(realm) {
  const issuer = `${issuerBase}/realms/${realm.name}`;
  const provider = new Provider(issuer, {
    clients: [...realm.clients.values()].map(clientMetadata),
    jwks: { keys: realm.keys },
    cookies: { keys: realm.cookieKeys },
    routes: ROUTES,
    scopes: ['openid', 'offline_access', 'profile', 'email', 'roles'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
      roles: ['realm_access', 'region'],
    },
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Clients need not send `resource`: the token is for the client's configured audience.
        defaultResource: (ctx, client) => {
          const cfg = client && realm.clients.get(client.clientId);
          return cfg ? resourceFor(cfg) : undefined;
        },
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => {
          const cfg = realm.clients.get(client.clientId);
          if (!cfg || resource !== resourceFor(cfg)) {
            throw new errors.InvalidTarget(`client may only request tokens for ${cfg ? resourceFor(cfg) : '?'}`);
          }
          return {
            scope: 'openid profile email roles',
            audience: cfg.audience,
            accessTokenTTL: cfg.access_token_ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: (ctx, token) => tokenClaimsFor(realm, token),
    ttl: {
      ClientCredentials: (ctx, token, client) => token.resourceServer?.accessTokenTTL
        ?? realm.clients.get(client.clientId)?.access_token_ttl ?? 300,
      AccessToken: (ctx, token, client) => token.resourceServer?.accessTokenTTL
        ?? realm.clients.get(client.clientId)?.access_token_ttl ?? 300,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
    },
    findAccount: (ctx, id) => {
      const user = realm.users.get(id) ?? { username: id, roles: [], region: null, name: id };
      return {
        accountId: id,
        claims: () => ({
          sub: id,
          name: user.name,
          preferred_username: user.username,
          email: user.email,
          realm_access: { roles: [...user.roles] },
          ...(user.region ? { region: user.region } : {}),
        }),
      };
    },
    clientBasedCORS: () => true,
  });
  provider.on('server_error', (ctx, err) => log('server_error', err));
  return provider;
}

function rebuild(realm) {
  realm.provider = buildProvider(realm);
  realm.handler = realm.provider.callback();
}

function createRealm(name, spec, persistedKeys) {
  if (!REALM_RE.test(name)) throw new ConfigError(`invalid realm name ${JSON.stringify(name)}`);
  const clients = new Map();
  for (const raw of spec.clients ?? []) {
    const cfg = normalizeClient(raw, name);
    clients.set(cfg.client_id, cfg);
  }
  const users = new Map();
  for (const raw of spec.users ?? []) {
    const user = normalizeUser(raw);
    users.set(user.username, user);
  }
  const keys = Array.isArray(persistedKeys?.keys) && persistedKeys.keys.length
    ? persistedKeys.keys
    : [newSigningKey()];
  const realm = {
    name,
    clients,
    users,
    keys,
    cookieKeys: [crypto.randomBytes(32).toString('base64url')],
    provider: null,
    handler: null,
  };
  rebuild(realm);
  return realm;
}

// ---- dev endpoints ------------------------------------------------------------------------------

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(data);
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new ConfigError('request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new ConfigError('request body is not valid JSON');
  }
}

async function handleDev(req, res, url) {
  if (url.pathname === '/_dev/health' && req.method === 'GET') {
    return sendJson(res, 200, { status: 'ok', realms: [...realms.keys()] });
  }
  const m = url.pathname.match(/^\/_dev\/realms\/([^/]+)\/(rotate-keys|clients|keys)$/);
  if (!m) return sendJson(res, 404, { error: 'not_found' });
  const [, name, action] = m;
  const realm = realms.get(name);
  if (!realm) return sendJson(res, 404, { error: 'unknown_realm', realm: name });

  if (action === 'keys' && req.method === 'GET') {
    return sendJson(res, 200, { current: realm.keys[0].kid, kids: realm.keys.map((k) => k.kid) });
  }
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });

  if (action === 'rotate-keys') {
    const body = await readBody(req);
    const key = newSigningKey();
    // The new key goes first (oidc-provider signs with the first matching key); older keys stay in
    // the JWKS so tokens already issued keep verifying, like Keycloak's passive keys.
    const keep = Number.isInteger(body.keep) && body.keep >= 0 ? body.keep : 2;
    realm.keys = [key, ...realm.keys].slice(0, keep + 1);
    rebuild(realm);
    persistKeys(realms);
    log(`realm ${name}: new signing key ${key.kid}`);
    return sendJson(res, 200, { kid: key.kid, kids: realm.keys.map((k) => k.kid) });
  }

  // action === 'clients'
  const body = await readBody(req);
  const cfg = normalizeClient(body, name);
  realm.clients.set(cfg.client_id, cfg);
  rebuild(realm);
  log(`realm ${name}: client ${cfg.client_id} registered`);
  return sendJson(res, 201, cfg);
}

// ---- introspection of JWT access tokens ----------------------------------------------------------
// oidc-provider refuses to introspect structured (JWT) access tokens; Keycloak does introspect them,
// and every access token here is a JWT, so the introspection route is answered here instead.

function secretMatches(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyOwnJwt(realm, token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header;
  let payload;
  try {
    header = b64json(parts[0]);
    payload = b64json(parts[1]);
  } catch {
    return null;
  }
  if (header.alg !== 'RS256') return null;
  const jwk = realm.keys.find((k) => k.kid === header.kid);
  if (!jwk) return null;
  const { kty, n, e } = jwk;
  const publicKey = crypto.createPublicKey({ key: { kty, n, e }, format: 'jwk' });
  const ok = crypto.verify(
    'RSA-SHA256',
    Buffer.from(`${parts[0]}.${parts[1]}`),
    publicKey,
    Buffer.from(parts[2], 'base64url'),
  );
  if (!ok) return null;
  const now = Math.floor(Date.now() / 1000);
  if (payload.iss !== realm.provider.issuer || typeof payload.exp !== 'number' || payload.exp <= now) return null;
  return payload;
}

async function handleIntrospection(realm, req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const params = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  let clientId = params.get('client_id');
  let clientSecret = params.get('client_secret');
  const basic = /^Basic (.+)$/i.exec(req.headers.authorization ?? '');
  if (basic) {
    const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
    const sep = decoded.indexOf(':');
    clientId = decodeURIComponent(decoded.slice(0, sep));
    clientSecret = decodeURIComponent(decoded.slice(sep + 1));
  }
  const client = clientId ? realm.clients.get(clientId) : undefined;
  if (!client || clientSecret === null || !secretMatches(clientSecret, client.client_secret)) {
    return sendJson(res, 401, { error: 'invalid_client', error_description: 'client authentication failed' });
  }
  const token = params.get('token');
  if (!token) return sendJson(res, 400, { error: 'invalid_request', error_description: 'missing token' });
  const payload = verifyOwnJwt(realm, token);
  if (!payload) return sendJson(res, 200, { active: false });
  return sendJson(res, 200, {
    ...payload,
    active: true,
    token_type: 'Bearer',
    username: payload.preferred_username,
  });
}

// ---- server -------------------------------------------------------------------------------------

const REALM_PATH_RE = /^\/realms\/([^/?#]+)(\/[^?#]*)?/;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname.startsWith('/_dev/')) {
    if (!devEndpoints) return sendJson(res, 404, { error: 'not_found' });
    handleDev(req, res, url).catch((err) => {
      if (err instanceof ConfigError) return sendJson(res, 400, { error: 'invalid_request', error_description: err.message });
      log('dev endpoint failed', err);
      return sendJson(res, 500, { error: 'server_error' });
    });
    return undefined;
  }
  const m = url.pathname.match(REALM_PATH_RE);
  const realm = m && realms.get(decodeURIComponent(m[1]));
  if (!realm) {
    return sendJson(res, 404, { error: 'Realm does not exist' });
  }
  // Mount the realm's provider under its prefix: oidc-provider derives the mount path from
  // originalUrl minus url, exactly as with express' app.use(prefix, provider.callback()).
  const prefix = `/realms/${m[1]}`;
  if (m[2] === ROUTES.introspection && req.method === 'POST') {
    handleIntrospection(realm, req, res).catch((err) => {
      log('introspection failed', err);
      sendJson(res, 500, { error: 'server_error' });
    });
    return undefined;
  }
  req.originalUrl = req.url;
  req.url = req.url.slice(prefix.length) || '/';
  if (!req.url.startsWith('/')) req.url = `/${req.url}`;
  return realm.handler(req, res);
});

function shutdown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

const config = readJson(configPath);
if (!config || typeof config.realms !== 'object' || config.realms === null) {
  fail(`${configPath}: expected {"realms": {"<name>": {"clients": [...]}}}`);
}

server.on('error', (err) => fail(`cannot listen on ${host}:${requestedPort}: ${err.message}`));
server.listen(requestedPort, host, () => {
  const { port } = server.address();
  const publicHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  const hostPart = publicHost.includes(':') ? `[${publicHost}]` : publicHost;
  issuerBase = (argv['issuer-base'] ?? process.env.IDP_ISSUER_BASE ?? `http://${hostPart}:${port}`).replace(/\/+$/, '');
  try {
    const persisted = loadPersistedKeys();
    for (const [name, spec] of Object.entries(config.realms)) {
      realms.set(name, createRealm(name, spec ?? {}, persisted[name]));
    }
    persistKeys(realms);
  } catch (err) {
    fail(err instanceof ConfigError ? `${configPath}: ${err.message}` : err.stack);
  }
  log(`serving realms ${[...realms.keys()].join(', ')} at ${issuerBase}/realms/<realm>`);
  process.stdout.write(`READY ${port}\n`);
});
