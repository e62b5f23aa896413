// A wasi:http handler in JavaScript, built into a component by
// componentize-js: StarlingMonkey's fetch event, as in a service worker.
//
// | request              | answer                                        |
// |----------------------|-----------------------------------------------|
// | `GET /`              | `GREETING from JavaScript` (GREETING from --env) |
// | `POST /echo`         | the request body back                         |
// | `GET /stream?n=N`    | N lines, `piece I`, 50 ms apart, as they come |
// | `GET /env?name=NAME` | `NAME=VALUE` of the guest's environment       |
// | `GET /visits`        | `visit N`: a count kept in the key-value store |
// |                      | the route is granted (the bucket `""`)        |
// | anything else        | 404                                           |

import { getEnvironment } from 'wasi:cli/environment@0.2.10';
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';

const TEXT = { 'content-type': 'text/plain; charset=utf-8' };

function env(name) {
  const found = getEnvironment().find(([key]) => key === name);
  return found ? found[1] : undefined;
}

function stream(pieces) {
  const encoder = new TextEncoder();
  let sent = 0;
  return new ReadableStream({
    async pull(controller) {
      if (sent === pieces) {
        controller.close();
        return;
      }
      controller.enqueue(encoder.encode(`piece ${sent}\n`));
      sent += 1;
      await new Promise((resolve) => setTimeout(resolve, 50));
    },
  });
}

async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname === '/') {
    return new Response(`${env('GREETING') ?? 'hello'} from JavaScript\n`, { headers: TEXT });
  }
  if (url.pathname === '/echo' && request.method === 'POST') {
    const body = await request.arrayBuffer();
    return new Response(body, { headers: { 'content-type': 'application/octet-stream' } });
  }
  if (url.pathname === '/stream') {
    return new Response(stream(Number(url.searchParams.get('n') ?? 3)), { headers: TEXT });
  }
  if (url.pathname === '/visits') {
    try {
      const visits = increment(open(''), 'visits', 1n);
      return new Response(`visit ${visits}\n`, { headers: TEXT });
    } catch (err) {
      return new Response(`no store: ${JSON.stringify(err.payload ?? err)}\n`, { status: 503, headers: TEXT });
    }
  }
  if (url.pathname === '/env') {
    const name = url.searchParams.get('name') ?? '';
    return new Response(`${name}=${env(name) ?? ''}\n`, { headers: TEXT });
  }
  return new Response('not found\n', { status: 404, headers: TEXT });
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
