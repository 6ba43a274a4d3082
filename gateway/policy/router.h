/* Route selection: the first route in file order whose host, path and
 * method all match. Pure: reads the config snapshot only. */
#ifndef GW_POLICY_ROUTER_H
#define GW_POLICY_ROUTER_H

#include "core/buf.h"
#include "core/config.h"

/* host: the Host header or absolute-form authority, port allowed, any case.
 * path: the request target path, query included (ignored for matching).
 * Returns NULL when no route matches (the caller answers 404). */
const struct gw_route *gw_router_match(const struct gw_config *cfg, struct gw_slice host,
                                       struct gw_slice path, struct gw_slice method);

#endif
